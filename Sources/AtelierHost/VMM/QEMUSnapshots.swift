import AtelierProcess
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Snapshots as memory files. A booted VM's RAM is a file of its own mapped shared: a snapshot
/// saves the devices with `x-ignore-shared` (the RAM stays out of the stream: tens of KB, ms)
/// and takes a point-in-time copy of the file (reflink where the file system has it, else its
/// allocated extents). A restore maps the snapshot's file privately and loads only the
/// devices: its pages load on first touch and stay shared by every restore of that snapshot.
///
/// A restored VM cannot be saved that way: `x-ignore-shared` skips only shared RAM, and its RAM
/// is a private mapping. Options measured here for a 256 MiB tiny guest (TCG, 2 busy cores):
/// - a copy of the snapshot per restore, mapped shared (reflink or sparse copy at restore):
///   0.2–0.5 s more per restore without reflink, and no page is shared between restores any
///   more — the density that makes restores worth having is gone;
/// - `pmemsave` of the whole RAM while paused: 2.3 s, and the dump is not sparse;
/// - a full migration into a "twin" QEMU on a shared file: the whole RAM crosses a socket while
///   paused, and a second process must start.
/// Chosen: the pages such a VM wrote are exactly the private (anonymous) pages of its mapping,
/// which `/proc/<pid>/pagemap` tells apart from the file's. So: copy the snapshot's file while
/// the VM still runs (`prepareSave`), pause, save the devices alone (`xen-save-devices-state`,
/// QEMU's generic device-state writer, which leaves RAM out whatever its backing), and write
/// the written pages, read from `/proc/<pid>/mem`, over the copy. The pause grows with what
/// the guest wrote since its restore (measured: 17 ms of device state and a few ms of pages
/// for an idle guest), not with its size.
extension QEMUMicroVM {
  static let memoryName = "memory"
  static let devicesName = "devices.state"

  /// A restored VM: its snapshot's memory file is copied now, while the VM runs (nothing
  /// writes that file). A booted VM's file changes until it pauses: nothing to do yet.
  public func prepareSave(_ handle: VMHandle, into directory: String) async throws {
    guard case .privateMapping(let base) = handle.memory else { return }
    let target = "\(directory)/\(Self.memoryName)"
    unlink(target)
    do { try FileCopy.copy(file: base, to: target) } catch {
      throw VMMError("cannot copy the memory of \(handle.sandboxId)'s snapshot: \(error)")
    }
  }

  public func saveState(_ handle: VMHandle, into directory: String) async throws -> SavedVMState {
    let memory = "\(directory)/\(Self.memoryName)"
    let devices = "\(directory)/\(Self.devicesName)"
    let format: SavedVMState.Format
    switch handle.memory {
    case .shared(let path):
      try await saveDevicesIgnoringSharedRAM(handle, to: devices)
      unlink(memory)
      do {
        let source = try FileCopy.openPlainFile(path)
        defer { close(source) }
        try FileCopy.copy(from: source, to: memory)
      } catch {
        throw VMMError("cannot copy the memory of \(handle.sandboxId): \(error)")
      }
      format = .qemuMemoryFile
    case .privateMapping(let base):
      if !FileManager.default.fileExists(atPath: memory) {
        try await prepareSave(handle, into: directory)
      }
      try await saveDevicesOnly(handle, to: devices)
      let target = open(memory, O_WRONLY | O_NOFOLLOW | O_CLOEXEC)
      guard target >= 0 else {
        throw VMMError("cannot open \(memory): \(String(cString: strerror(errno)))")
      }
      defer { close(target) }
      try PrivatePages.capture(pid: handle.pid, mappingOf: base, into: target)
      format = .qemuMemoryFileDevices
    case nil:
      throw VMMError(
        "sandbox \(handle.sandboxId) runs a VM started before guest memory lived in files; "
          + "stop and start it, then take the snapshot")
    }
    // Restores map the memory (QEMU 7.2 opens it read-write even for a private mapping, so
    // the VM user may write it: see `memoryBackend`); the devices go to QEMU as a descriptor.
    try user?.share(memory, writable: true)
    return SavedVMState(format: format, memoryPath: memory, devicesPath: devices)
  }

  /// A migration stream of the devices, the shared RAM left out: QEMU writes it into a
  /// descriptor it gets over QMP (`getfd`, SCM_RIGHTS), as `exec:` is refused by its seccomp
  /// filter and the snapshots folder is not its to open.
  func saveDevicesIgnoringSharedRAM(_ handle: VMHandle, to path: String) async throws {
    let fd = try Self.createStateFile(path)
    defer { close(fd) }
    let client = qmp(handle)
    try await client.session { session in
      try session.execute(
        "migrate-set-capabilities",
        arguments: ["capabilities": [["capability": "x-ignore-shared", "state": true]]])
      try session.execute("getfd", arguments: ["fdname": "atelier-state"], passing: fd)
      try session.execute("migrate", arguments: ["uri": "fd:atelier-state"])
    }
    try await client.waitForMigration()
  }

  /// The devices without any RAM (`xen-save-devices-state` writes into an fd set the
  /// descriptor joined with `add-fd`).
  func saveDevicesOnly(_ handle: VMHandle, to path: String) async throws {
    let fd = try Self.createStateFile(path)
    defer { close(fd) }
    try await qmp(handle).session { session in
      let added = try session.execute("add-fd", arguments: [:], passing: fd) as? [String: Any]
      guard let set = added?["fdset-id"] as? Int else { throw QMPError("add-fd gave no fd set") }
      defer { _ = try? session.execute("remove-fd", arguments: ["fdset-id": set]) }
      try session.execute(
        "xen-save-devices-state", arguments: ["filename": "/dev/fdset/\(set)", "live": false])
    }
  }

  static func createStateFile(_ path: String) throws -> Int32 {
    unlink(path)
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw VMMError("cannot create \(path): \(String(cString: strerror(errno)))")
    }
    return fd
  }

  /// A new QEMU maps the snapshot's memory privately (through a hard link in its runtime
  /// directory) and loads the devices from a descriptor; it is left paused.
  public func restore(_ spec: VMSpec, from state: SavedVMState) async throws -> VMHandle {
    guard state.format == .qemuMemoryFile || state.format == .qemuMemoryFileDevices else {
      throw VMMError("a \(state.format.rawValue) snapshot cannot be restored by QEMU")
    }
    let dir = spec.runtimeDirectory
    try prepareRuntimeDirectory(dir)
    guard link(state.memoryPath, Self.baseMemoryLink(dir)) == 0 else {
      throw VMMError(
        "cannot link the snapshot memory into \(dir) (snapshots and sandboxes must be on one "
          + "file system): \(String(cString: strerror(errno)))")
    }
    let handle = try await launch(
      spec, memory: .privateMapping(base: state.memoryPath), incoming: state.format)
    do {
      let fd = open(state.devicesPath, O_RDONLY | O_CLOEXEC)
      guard fd >= 0 else {
        throw VMMError("cannot open \(state.devicesPath): \(String(cString: strerror(errno)))")
      }
      defer { close(fd) }
      let client = qmp(handle)
      try await client.session { session in
        try session.execute(
          "migrate-set-capabilities",
          arguments: ["capabilities": [["capability": "x-ignore-shared", "state": true]]])
        try session.execute("getfd", arguments: ["fdname": "atelier-state"], passing: fd)
        try session.execute("migrate-incoming", arguments: ["uri": "fd:atelier-state"])
      }
      try await client.waitForMigration()
    } catch {
      let tail = consoleTail(runtimeDirectory: dir)
      await kill(handle)
      throw VMMError("restore failed: \(error)", consoleTail: tail)
    }
    return handle
  }
}

/// The pages a process wrote into its private mapping of a file.
enum PrivatePages {
  static let pageSize = 4096

  /// Writes into `target` (a copy of `base`, same offsets) every page of `pid`'s private
  /// mappings of `base` that is the process's own (anonymous: written since it was mapped, or
  /// swapped out). The mapping is found by the file's device and inode in /proc/<pid>/maps —
  /// no path the VM's user could have changed is trusted. Returns the pages written.
  @discardableResult
  static func capture(pid: Int32, mappingOf base: String, into target: Int32) throws -> Int {
    var info = stat()
    guard stat(base, &info) == 0 else {
      throw VMMError("cannot stat \(base): \(String(cString: strerror(errno)))")
    }
    let segments = try mappings(pid: pid, device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    guard !segments.isEmpty else {
      throw VMMError("no mapping of \(base) in process \(pid): cannot read its guest RAM")
    }
    let pagemap = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
    let memory = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
    defer {
      if pagemap >= 0 { close(pagemap) }
      if memory >= 0 { close(memory) }
    }
    guard pagemap >= 0, memory >= 0 else {
      throw VMMError(
        "cannot read the memory of process \(pid): \(String(cString: strerror(errno)))")
    }
    var written = 0
    for segment in segments {
      written += try copyOwnPages(segment, pagemap: pagemap, memory: memory, target: target)
    }
    return written
  }

  struct Segment: Equatable {
    var start: UInt64
    var end: UInt64
    var fileOffset: UInt64
  }

  /// The address ranges of /proc/<pid>/maps backed by (device, inode).
  static func mappings(pid: Int32, device: UInt64, inode: UInt64) throws -> [Segment] {
    // read(2) to the end: /proc files report no size, and Foundation stops at its first chunk.
    guard let text = readTextFile("/proc/\(pid)/maps", limit: 64 << 20) else {
      throw VMMError("cannot read /proc/\(pid)/maps")
    }
    return parseMappings(text, device: device, inode: inode)
  }

  static func parseMappings(_ text: String, device: UInt64, inode: UInt64) -> [Segment] {
    // glibc's gnu_dev_major / gnu_dev_minor.
    let major = (device >> 8) & 0xfff | (device >> 32) & 0xffff_f000
    let minor = device & 0xff | (device >> 12) & 0xffff_ff00
    return text.split(separator: "\n").compactMap { line in
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      guard fields.count >= 5, UInt64(fields[4]) == inode else { return nil }
      let numbers = fields[3].split(separator: ":").compactMap { UInt64($0, radix: 16) }
      guard numbers == [major, minor] else { return nil }
      let range = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
      guard range.count == 2, let offset = UInt64(fields[2], radix: 16) else { return nil }
      return Segment(start: range[0], end: range[1], fileOffset: offset)
    }
  }

  /// pagemap entry: bit 63 present, 62 swapped, 61 file page or shared anonymous.
  static func isOwnPage(_ entry: UInt64) -> Bool {
    let present = entry >> 63 & 1 == 1
    let swapped = entry >> 62 & 1 == 1
    let filePage = entry >> 61 & 1 == 1
    return (present && !filePage) || swapped
  }

  static func copyOwnPages(_ segment: Segment, pagemap: Int32, memory: Int32, target: Int32) throws
    -> Int
  {
    let pages = Int((segment.end - segment.start) / UInt64(pageSize))
    let batch = 32768
    var entries = [UInt64](repeating: 0, count: batch)
    var buffer = [UInt8](repeating: 0, count: 256 * pageSize)
    var written = 0
    var first = 0
    while first < pages {
      let count = min(batch, pages - first)
      let offset = off_t((segment.start / UInt64(pageSize) + UInt64(first)) * 8)
      let read = entries.withUnsafeMutableBytes {
        pread(pagemap, $0.baseAddress, count * 8, offset)
      }
      guard read == count * 8 else { throw VMMError("short read of pagemap") }
      var index = 0
      while index < count {
        guard isOwnPage(entries[index]) else {
          index += 1
          continue
        }
        var run = 1
        while index + run < count, run < 256, isOwnPage(entries[index + run]) { run += 1 }
        let page = first + index
        let address = segment.start + UInt64(page * pageSize)
        let bytes = run * pageSize
        let got = buffer.withUnsafeMutableBytes {
          pread(memory, $0.baseAddress, bytes, off_t(address))
        }
        guard got == bytes else {
          throw VMMError("cannot read guest RAM: \(String(cString: strerror(errno)))")
        }
        let fileOffset = off_t(segment.fileOffset + UInt64(page * pageSize))
        let put = buffer.withUnsafeBytes { pwrite(target, $0.baseAddress, bytes, fileOffset) }
        guard put == bytes else {
          throw VMMError("cannot write the memory file: \(String(cString: strerror(errno)))")
        }
        written += run
        index += run
      }
      first += count
    }
    return written
  }
}
