import Foundation

/// Finds host programs by name, and knows which Debian package provides each.
///
/// A normal user's PATH has no `/usr/sbin` or `/sbin`, yet that is where `mkfs.ext4`, `ip`,
/// `iptables`, `lvcreate` and `debugfs` live (and most of them work without root on files
/// the user owns), so those folders are searched after PATH.
public struct HostTools: Sendable, Equatable {
  /// Searched after PATH, in this order.
  public static let systemDirectories = [
    "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
  ]

  /// The folders searched, PATH's first, without duplicates or empty entries.
  public let directories: [String]

  public init(
    path: String? = ProcessInfo.processInfo.environment["PATH"],
    systemDirectories: [String] = HostTools.systemDirectories
  ) {
    var seen = Set<String>()
    var directories: [String] = []
    let fromPath = (path ?? "").split(separator: ":").map(String.init)
    for directory in fromPath + systemDirectories where !directory.isEmpty {
      if seen.insert(directory).inserted { directories.append(directory) }
    }
    self.directories = directories
  }

  /// `name` itself when it is a path to an executable, else the first executable of that name
  /// in `directories`.
  public func find(_ name: String) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    for directory in directories {
      let candidate = "\(directory)/\(name)"
      var status = stat()
      // A folder is "executable" too: only regular files (or links to them) count.
      if stat(candidate, &status) == 0, status.st_mode & S_IFMT == S_IFREG,
        access(candidate, X_OK) == 0
      {
        return candidate
      }
    }
    return nil
  }

  /// The path of `name`, or an error naming where it looked and the package to install.
  public func require(_ name: String) throws -> String {
    guard let path = find(name) else { throw MissingTool(name: name, searched: directories) }
    return path
  }

  /// PATH for the programs Atelier runs: the same folders, so that what they run in turn
  /// (debootstrap runs chroot, mount…) is found the same way.
  public var pathValue: String { directories.joined(separator: ":") }

  /// The Debian package that provides each host program Atelier runs.
  public static let packages: [String: String] = [
    "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
    "apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg",
    "qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils",
    "ip": "iproute2", "bridge": "iproute2", "iptables": "iptables",
    "iptables-restore": "iptables", "ip6tables": "iptables", "nft": "nftables",
    "lvcreate": "lvm2", "lvremove": "lvm2", "lvextend": "lvm2", "lvchange": "lvm2", "lvs": "lvm2",
    "vgcreate": "lvm2", "vgchange": "lvm2", "vgs": "lvm2", "pvcreate": "lvm2", "pvs": "lvm2",
    "thin_check": "thin-provisioning-tools", "losetup": "mount", "truncate": "coreutils",
    "chroot": "coreutils", "debootstrap": "debootstrap", "strip": "binutils", "ldd": "libc-bin",
    "tar": "tar", "useradd": "passwd", "usermod": "passwd", "setpriv": "util-linux",
    "systemctl": "systemd", "modprobe": "kmod",
  ]

  /// The package for `tool` (a name or a path), if Atelier knows it.
  public static func package(for tool: String) -> String? {
    packages[(tool as NSString).lastPathComponent]
  }
}

/// A host program that is nowhere to be found; says where it looked and what to install.
public struct MissingTool: Error, CustomStringConvertible, Sendable, Equatable {
  public var name: String
  public var searched: [String]

  public init(name: String, searched: [String]) {
    self.name = name
    self.searched = searched
  }

  public var package: String? { HostTools.package(for: name) }

  /// "install the Debian package e2fsprogs (apt-get install e2fsprogs)", or nil.
  public var fix: String? {
    package.map { "install the Debian package \($0) (apt-get install \($0))" }
  }

  public var description: String {
    let places =
      searched.isEmpty ? "nowhere: no folders to search" : searched.joined(separator: ":")
    return "\(name) not found (looked in \(places))" + (fix.map { "; \($0)" } ?? "")
  }
}
