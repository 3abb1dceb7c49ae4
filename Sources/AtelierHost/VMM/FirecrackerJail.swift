import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Firecracker under its jailer (`firecracker-microvm/firecracker`, docs/jailer.md): its own
/// mount namespace and chroot, privileges dropped to `uid:gid`. The jailer builds the chroot
/// at `<runtime>/jail/<exec name>/<id>/root`; Atelier creates that folder first and places in
/// it what the VM needs (hard links where it can: the kernel, the initrd, the disk; a device
/// node for a block device), under the same relative names the unjailed VM uses, so snapshots
/// work across both. `<runtime>/jail-root` links to it: the manager reaches the API and vsock
/// sockets through that short path.
public struct FirecrackerJail: Sendable, Equatable {
  public var jailerBinary: String
  public var uid: UInt32
  public var gid: UInt32

  public init(jailerBinary: String, uid: UInt32, gid: UInt32) {
    self.jailerBinary = jailerBinary
    self.uid = uid
    self.gid = gid
  }

  static let rootLinkName = "jail-root"
  /// Where the kernel, the initrd and the snapshot files are inside the chroot.
  static let kernelName = "vmlinux"
  static let initrdName = "initrd"
  /// Where a snapshot is written, and where the snapshot a VM was restored from is linked:
  /// two names, so saving never writes into the files a restore maps.
  static let memoryName = "snapshot.mem"
  static let restoredMemoryName = "restored.mem"
  /// The microVM state next to each of them.
  static let devicesSuffix = ".vmstate"

  static func rootLink(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/\(rootLinkName)"
  }

  static func chrootBase(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/jail" }

  /// The chroot, relative to the runtime directory (what the jailer derives from its options).
  static func chrootRelative(firecracker: String, sandboxId: String) -> String {
    "jail/\(URL(fileURLWithPath: firecracker).lastPathComponent)/\(sandboxId)/root"
  }

  /// The jailer's command line. It passes `--id` to Firecracker itself; what follows `--` is
  /// Firecracker's (the API socket, relative to the chroot's root).
  func arguments(firecracker: String, sandboxId: String, runtimeDirectory: String) -> [String] {
    [
      "--id", sandboxId, "--exec-file", firecracker, "--uid", String(uid), "--gid", String(gid),
      "--chroot-base-dir", Self.chrootBase(runtimeDirectory), "--", "--api-sock",
      FirecrackerVMM.apiSocketName,
    ]
  }

  /// Creates the chroot and the link to it, and places the kernel, the initrd, the disk and
  /// `extraFiles` (read-only, by name in the chroot), all before the jailed process exists.
  func prepare(
    _ spec: VMSpec, firecracker: String, extraFiles: [(source: String, name: String)] = []
  )
    throws
  {
    let relative = Self.chrootRelative(firecracker: firecracker, sandboxId: spec.sandboxId)
    let root = "\(spec.runtimeDirectory)/\(relative)"
    let files = FileManager.default
    try? files.removeItem(atPath: "\(spec.runtimeDirectory)/jail")
    try? files.removeItem(atPath: Self.rootLink(spec.runtimeDirectory))
    try files.createDirectory(atPath: root, withIntermediateDirectories: true)
    try files.createSymbolicLink(
      atPath: Self.rootLink(spec.runtimeDirectory), withDestinationPath: relative)
    try place(spec.kernelPath, at: "\(root)/\(Self.kernelName)", owned: false)
    if !spec.initrdPath.isEmpty {
      try place(spec.initrdPath, at: "\(root)/\(Self.initrdName)", owned: false)
    }
    try placeDisk(spec.disk.path, at: "\(root)/\(FirecrackerVMM.diskLinkName)")
    for file in extraFiles {
      try place(file.source, at: "\(root)/\(file.name)", owned: false)
    }
    if let keyDrive = spec.agentKeyDrive {
      // The jailed user opens it (0600, its own from now on); nobody else can.
      try place(keyDrive, at: "\(root)/\(FirecrackerVMM.keyDriveName)", owned: true)
    }
  }

  /// A block device gets a node of its own (same device number) owned by the jailed user;
  /// a file is hard-linked and handed to that user (the VM writes it).
  func placeDisk(_ disk: String, at target: String) throws {
    var info = stat()
    guard stat(disk, &info) == 0 else {
      throw VMMError("cannot use the disk \(disk): \(String(cString: strerror(errno)))")
    }
    if (info.st_mode & S_IFMT) == S_IFBLK {
      guard mknod(target, S_IFBLK | 0o600, info.st_rdev) == 0, lchown(target, uid, gid) == 0
      else {
        throw VMMError(
          "cannot make the disk node \(target): \(String(cString: strerror(errno)))")
      }
      return
    }
    // Never a copy: the VM would write to the copy and the volume would not see it.
    guard link(disk, target) == 0 else {
      throw VMMError(
        "cannot link the disk \(disk) into the jail (it must be on the file system of the "
          + "sandboxes folder): \(String(cString: strerror(errno)))")
    }
    guard lchown(target, uid, gid) == 0 else {
      throw VMMError(
        "cannot hand \(target) to the jailed user: \(String(cString: strerror(errno)))")
    }
  }

  /// Hard-links `source` to `target`, or copies it when they are on different file systems
  /// (read-only files: the kernel, the initrd, a snapshot).
  func place(_ source: String, at target: String, owned: Bool) throws {
    if link(source, target) != 0 {
      guard errno == EXDEV else {
        throw VMMError(
          "cannot place \(source) in the jail: \(String(cString: strerror(errno)))")
      }
      do {
        try FileManager.default.copyItem(atPath: source, toPath: target)
      } catch {
        throw VMMError("cannot copy \(source) into the jail: \(error)")
      }
    }
    if owned, lchown(target, uid, gid) != 0 {
      throw VMMError(
        "cannot hand \(target) to the jailed user: \(String(cString: strerror(errno)))")
    }
  }

  /// Moves a file the jailed Firecracker wrote out of its chroot, to where the manager keeps
  /// it, and makes it root's and read-only. The chroot is the jailed user's, so the moved file
  /// itself is checked: a regular file with no other link (not a symlink, not a hard link to
  /// some host file), else it is removed and refused.
  static func takeOut(_ source: String, to target: String) throws {
    if rename(source, target) != 0 {
      guard errno == EXDEV else {
        throw VMMError(
          "cannot move \(source) to \(target): \(String(cString: strerror(errno)))")
      }
      var info = stat()
      guard lstat(source, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
        throw VMMError("\(source) is not a regular file")
      }
      do {
        try FileManager.default.copyItem(atPath: source, toPath: target)
        try FileManager.default.removeItem(atPath: source)
      } catch {
        throw VMMError("cannot move \(source) to \(target): \(error)")
      }
    }
    let fd = open(target, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    var info = stat()
    guard fd >= 0, fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG,
      info.st_nlink == 1, fchown(fd, 0, 0) == 0, fchmod(fd, 0o444) == 0
    else {
      let reason = String(cString: strerror(errno))
      if fd >= 0 { close(fd) }
      unlink(target)
      throw VMMError("refused \(source) from the jail: not a plain file of its own (\(reason))")
    }
    close(fd)
  }
}
