import AtelierCore
import Foundation

/// Whether this process may open `/dev/kvm`, and if not, how to fix it. Opening the device
/// proves only access: whether KVM runs guests is the acceleration probe's question (on a
/// PVM-only host, a guest under KVM hangs).
public enum KVMDevice: Sendable, Equatable {
  case missing
  /// It exists but this user may not open it; `fix` says how to get access.
  case noAccess(permissions: String, fix: String)
  case accessible

  public static let path = "/dev/kvm"

  public static func check(path: String = KVMDevice.path) -> KVMDevice {
    var status = stat()
    guard stat(path, &status) == 0 else { return .missing }
    if access(path, R_OK | W_OK) == 0 { return .accessible }
    let group =
      getgrgid(status.st_gid).map { String(cString: $0.pointee.gr_name) } ?? "\(status.st_gid)"
    let owner =
      getpwuid(status.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "\(status.st_uid)"
    let permissions = "\(modeText(status.st_mode)) \(owner):\(group)"
    return .noAccess(
      permissions: permissions,
      fix: fix(groupCanUse: status.st_mode & 0o060 == 0o060, group: group, user: currentUserName()))
  }

  static func fix(groupCanUse: Bool, group: String, user: String) -> String {
    if groupCanUse {
      if isMember(user, of: group) {
        return "\(user) is in group \(group), but this session started before that: log in again"
      }
      return "sudo usermod -aG \(group) \(user), then log in again"
    }
    return "as root: groupadd -f -r kvm; chgrp kvm /dev/kvm; chmod 660 /dev/kvm "
      + "(Debian's udev rules do this at boot once the kvm group exists), "
      + "then usermod -aG kvm \(user) and log in again"
  }

  static func isMember(_ user: String, of group: String) -> Bool {
    guard let entry = getgrnam(group) else { return false }
    var member = entry.pointee.gr_mem
    while let name = member?.pointee {
      if String(cString: name) == user { return true }
      member = member?.advanced(by: 1)
    }
    return false
  }

  static func currentUserName() -> String {
    getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "\(getuid())"
  }

  static func modeText(_ mode: mode_t) -> String {
    let kind = mode & S_IFMT == S_IFCHR ? "c" : "-"
    let bits: [(mode_t, Character)] = [
      (0o400, "r"), (0o200, "w"), (0o100, "x"), (0o040, "r"), (0o020, "w"), (0o010, "x"),
      (0o004, "r"), (0o002, "w"), (0o001, "x"),
    ]
    return kind + String(bits.map { mode & $0.0 != 0 ? $0.1 : "-" })
  }

  /// One sentence for logs and the acceleration verdict.
  public var reason: String {
    switch self {
    case .missing: "no /dev/kvm on this host"
    case .noAccess(let permissions, let fix):
      "no access to /dev/kvm (\(permissions)); fix: \(fix)"
    case .accessible: "/dev/kvm is accessible"
    }
  }
}

/// The host programs each part of the configuration runs.
public enum RequiredTools {
  public struct Group: Sendable, Equatable {
    public var name: String
    public var tools: [String]
  }

  /// Image builds always; the storage and network backends when configured.
  public static func groups(for config: Config, root: Bool = getuid() == 0) -> [Group] {
    // Without root, the built tree is given to root inside the disk with debugfs.
    var images = ["apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "ldd"]
    if !root { images.append("debugfs") }
    var groups = [Group(name: "images", tools: images)]
    if config.storage == .lvm {
      groups.append(
        Group(
          name: "lvm",
          tools: [
            "lvs", "lvcreate", "lvremove", "lvextend", "lvchange", "vgs", "vgcreate", "vgchange",
            "pvs", "pvcreate", "thin_check", "losetup", "truncate",
          ]))
    }
    if config.network == .bridge {
      groups.append(
        Group(name: "bridge", tools: ["ip", "bridge", "iptables", "iptables-restore", "nft"]))
    } else if root {
      // A root manager filters user-mode guests' egress by the VM user's uid.
      groups.append(Group(name: "user-mode egress", tools: ["iptables", "ip6tables"]))
    }
    return groups
  }
}

/// Lists in sentences: never an empty one.
public enum Prose {
  /// "a", "a and b", "a, b and c"; `empty` when there is nothing.
  public static func list(_ items: [String], empty: String) -> String {
    switch items.count {
    case 0: return empty
    case 1: return items[0]
    default: return items.dropLast().joined(separator: ", ") + " and " + items[items.count - 1]
    }
  }

  /// The Debian packages that provide `tools`, once each, in order.
  public static func packages(for tools: [String]) -> [String] {
    var seen = Set<String>()
    return tools.compactMap { HostTools.package(for: $0) }.filter { seen.insert($0).inserted }
  }
}
