import AtelierCore
import AtelierProcess
import Foundation
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The unprivileged user VMM processes run as when the manager is root (`ATELIER_VM_USER`):
/// a guest that escapes its VMM lands in a process of this user, under the VMM's seccomp
/// filter, not in root. One user for every VM: it reaches the host's files only as that user
/// can, but all VMs' files are its own (per-VM users would be the next step).
public struct VMUser: Sendable, Equatable {
  public var name: String
  public var uid: UInt32
  public var gid: UInt32

  public init(name: String, uid: UInt32, gid: UInt32) {
    self.name = name
    self.uid = uid
    self.gid = gid
  }

  /// The user, created as a system user when it does not exist (root only, through the command
  /// runner). Nil when the manager is not root: VMs then run as the manager's own user.
  public static func ensure(
    named name: String, runner: any CommandRunning,
    logger: Logger = Logger(label: "atelier.vmm.user")
  ) async throws -> VMUser? {
    guard geteuid() == 0 else { return nil }
    if let user = lookUp(name) { return try checked(user) }
    logger.notice("creating the system user \(name) for VM processes")
    try await runner.run(
      Command(
        "useradd",
        ["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]))
    guard let user = lookUp(name) else {
      throw VMMError("useradd created no user \(name)")
    }
    return try checked(user)
  }

  static func checked(_ user: VMUser) throws -> VMUser {
    guard user.uid != 0 else {
      throw ConfigError(
        key: "ATELIER_VM_USER", source: nil,
        message: "\(user.name) is root: VMs must run as an unprivileged user")
    }
    return user
  }

  public static func lookUp(_ name: String) -> VMUser? {
    guard let entry = getpwnam(name) else { return nil }
    return VMUser(name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid)
  }

  /// What a VMM process is spawned with: this user, its group, and the groups of device nodes
  /// it must open itself (e.g. /dev/kvm).
  public func credentials(extraGroups: [UInt32] = []) -> ProcessCredentials {
    ProcessCredentials(uid: uid, gid: gid, groups: [gid] + extraGroups.filter { $0 != gid })
  }

  /// Hands `path` (not following a link) to this user. Through a descriptor: these paths are
  /// in folders the VM user writes, so a name swapped for a symlink must not redirect root's
  /// chown or chmod.
  public func own(_ path: String, mode: mode_t? = nil) throws {
    try Self.withDescriptor(path) { fd in
      guard fchown(fd, uid, gid) == 0 else {
        throw VMMError("cannot hand \(path) to \(name): \(String(cString: strerror(errno)))")
      }
      if let mode, fchmod(fd, mode) != 0 {
        throw VMMError("cannot set the mode of \(path): \(String(cString: strerror(errno)))")
      }
    }
  }

  /// Root's, readable (and with `writable`, writable) by this user's group only: snapshot
  /// files VMs map, frozen disks they read.
  public func share(_ path: String, writable: Bool = false) throws {
    try Self.withDescriptor(path) { fd in
      guard fchown(fd, 0, gid) == 0, fchmod(fd, writable ? 0o660 : 0o640) == 0 else {
        throw VMMError("cannot share \(path) with \(name): \(String(cString: strerror(errno)))")
      }
    }
  }

  /// `path` opened without following a final symlink (non-blocking, so a FIFO or device
  /// opens at once), for the duration of `body`.
  static func withDescriptor(_ path: String, _ body: (Int32) throws -> Void) throws {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
    guard fd >= 0 else {
      throw VMMError("cannot open \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    try body(fd)
  }

  /// The group of `device` when it lets its group read and write it (how /dev/kvm is usually
  /// shared); nil when this user could not open it through a group.
  public static func group(granting device: String) -> UInt32? {
    var info = stat()
    guard stat(device, &info) == 0, info.st_mode & 0o060 == 0o060, info.st_gid != 0 else {
      return nil
    }
    return info.st_gid
  }

  /// The data folder for VMs of this user: they may pass through it (and through the folders
  /// of what they open: images, kernels, volumes, sandboxes) and read images and kernels;
  /// nothing else. The database, the token, snapshots (guest memory), logs and caches stay
  /// root's alone. Folders are traverse-only for the VM group (0710), so names cannot be
  /// listed. Links (shared test data) are left as they are.
  public func prepareDataDirectory(_ config: Config, volumesDirectory: String) throws {
    let passable = [
      config.dataDir, config.sandboxesDir, volumesDirectory, config.imagesDir, config.kernelsDir,
    ]
    for directory in passable {
      var info = stat()
      guard lstat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR else { continue }
      guard chown(directory, 0, gid) == 0, chmod(directory, 0o710) == 0 else {
        throw VMMError(
          "cannot open \(directory) to \(name): \(String(cString: strerror(errno)))")
      }
    }
    for directory in [config.snapshotsDir, config.logsDir, config.cacheDir] {
      chmod(directory, 0o700)
    }
    // Regular files at the top (the database and its journal, the token): root's only.
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: config.dataDir)) ?? []
    for entry in entries {
      var info = stat()
      let path = "\(config.dataDir)/\(entry)"
      if lstat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG {
        chmod(path, 0o600)
      }
    }
  }
}
