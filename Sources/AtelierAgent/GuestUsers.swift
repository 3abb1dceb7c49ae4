import AtelierProcess
import Synchronization

/// Users of the guest, read from /etc/passwd and /etc/group when a command needs them.
struct GuestUser: Sendable, Equatable {
  var name: String
  var uid: UInt32
  var gid: UInt32
  var home: String
  var shell: String
  var groups: [UInt32]

  var credentials: ProcessCredentials {
    ProcessCredentials(uid: uid, gid: gid, groups: groups)
  }

  static let root = GuestUser(
    name: "root", uid: 0, gid: 0, home: "/root", shell: "/bin/sh", groups: [0])

  /// `name`, or the default user (`dev` where it exists, else `root`) when name is nil.
  static func resolve(_ name: String?) -> GuestUser? {
    let passwd = readTextFile("/etc/passwd") ?? ""
    let entries = passwd.split(separator: "\n").map {
      $0.split(separator: ":", omittingEmptySubsequences: false)
    }
    func find(_ wanted: String) -> GuestUser? {
      guard let fields = entries.first(where: { $0.count >= 7 && $0[0] == wanted }),
        let uid = UInt32(fields[2]), let gid = UInt32(fields[3])
      else { return nil }
      return GuestUser(
        name: wanted, uid: uid, gid: gid, home: String(fields[5]), shell: String(fields[6]),
        groups: supplementaryGroups(of: wanted, primary: gid))
    }
    if let name { return find(name) ?? (name == "root" ? .root : nil) }
    return find("dev") ?? find("root") ?? .root
  }

  static func supplementaryGroups(of user: String, primary: UInt32) -> [UInt32] {
    var groups: [UInt32] = [primary]
    for line in (readTextFile("/etc/group") ?? "").split(separator: "\n") {
      let fields = line.split(separator: ":", omittingEmptySubsequences: false)
      guard fields.count >= 4, let gid = UInt32(fields[2]) else { continue }
      if fields[3].split(separator: ",").contains(where: { $0 == user }), !groups.contains(gid) {
        groups.append(gid)
      }
    }
    return groups
  }

  /// A login-like environment for this user, overlaid with the sandbox-wide environment, then
  /// with `extra`.
  func environment(
    extra: [String: String]?, sandbox: [String: String] = SandboxEnvironmentStore.shared.current
  ) -> [String: String] {
    var environment = [
      "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      "HOME": home, "USER": name, "LOGNAME": name, "SHELL": shell,
      "LANG": "C.UTF-8", "TERM": "xterm-256color",
    ]
    for (key, value) in sandbox { environment[key] = value }
    for (key, value) in extra ?? [:] { environment[key] = value }
    return environment
  }
}

/// The sandbox-wide environment the manager sets (`PUT /system/environment`): every command,
/// terminal, service and process the agent starts gets it. In memory only: a snapshot keeps
/// it, a boot starts without it until the manager sends it again.
final class SandboxEnvironmentStore: Sendable {
  static let shared = SandboxEnvironmentStore()
  private let value = Mutex<[String: String]>([:])

  var current: [String: String] { value.withLock { $0 } }

  func replace(with environment: [String: String]) {
    value.withLock { $0 = environment }
  }
}
