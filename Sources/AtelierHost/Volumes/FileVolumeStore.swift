import Foundation
import Logging

/// Volumes as files in one folder: a reflink copy where the file system has it (XFS, btrfs),
/// else a qcow2 overlay backed by the base file. Never a full copy.
///
/// Which file backs which is kept in a sidecar next to each overlay (`<file>.backing`, the
/// backing file's path), written by the manager when it makes the overlay and never by a VM:
/// the store does not read disk contents to find backing files, since a raw clone's first
/// bytes are whatever its guest wrote there. The folder is root's (VMs may only pass through
/// it), and with `owner` each sandbox disk is that user's, frozen disks root's and read-only.
public struct FileVolumeStore: VolumeStore {
  public let name = "file"
  let directory: String
  let owner: VMUser?
  let logger: Logger

  public init(
    directory: String, owner: VMUser? = nil,
    logger: Logger = Logger(label: "atelier.volumes.file")
  ) {
    self.directory = directory
    self.owner = owner
    self.logger = logger
  }

  static let sidecarSuffix = ".backing"

  func path(_ name: String, _ format: DiskAttachment.Format) -> String {
    "\(directory)/\(name).\(format == .qcow2 ? "qcow2" : "img")"
  }

  /// A clone smaller than `minimumSizeBytes` gets that virtual size (sparse: nothing is
  /// written); the guest grows its file system to fill it at boot.
  public func clone(base: DiskAttachment, to name: String, minimumSizeBytes: UInt64)
    async throws -> DiskAttachment
  {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    if base.format == .raw {
      let target = path(name, .raw)
      if try Reflink.clone(from: base.path, to: target) {
        if try virtualSize(of: base) < minimumSizeBytes,
          truncate(target, off_t(minimumSizeBytes)) != 0
        {
          let reason = String(cString: strerror(errno))
          unlink(target)
          throw VolumeError("cannot grow \(target): \(reason)")
        }
        try handOver(target)
        return DiskAttachment(path: target, format: .raw)
      }
    }
    let target = path(name, .qcow2)
    let size = max(try virtualSize(of: base), minimumSizeBytes)
    try createOverlay(at: target, backing: base, virtualSize: size)
    return DiskAttachment(path: target, format: .qcow2)
  }

  /// A qcow2 overlay on `backing`, its sidecar, and the overlay handed to the VM user.
  func createOverlay(at target: String, backing: DiskAttachment, virtualSize: UInt64) throws {
    try Qcow2Overlay.create(
      at: target, backingFile: backing.path, backingFormat: backing.format,
      virtualSize: virtualSize)
    do {
      try writeSidecar(of: target, backing: backing.path)
      try handOver(target)
    } catch {
      unlink(target)
      unlink(target + Self.sidecarSuffix)
      throw error
    }
  }

  /// A disk the VM writes: its user's, no one else's.
  func handOver(_ path: String) throws {
    guard let owner else { return }
    do { try owner.own(path, mode: 0o600) } catch { throw VolumeError("\(error)") }
  }

  func writeSidecar(of file: String, backing: String) throws {
    let sidecar = file + Self.sidecarSuffix
    unlink(sidecar)
    let fd = open(sidecar, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw VolumeError("cannot write \(sidecar): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    let bytes = Array((backing + "\n").utf8)
    guard bytes.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == bytes.count else {
      throw VolumeError("cannot write \(sidecar): \(String(cString: strerror(errno)))")
    }
  }

  /// The backing file the manager recorded for `file`, if any.
  func readSidecar(of file: String) -> String? {
    guard let data = FileManager.default.contents(atPath: file + Self.sidecarSuffix),
      data.count < 4096
    else { return nil }
    let path = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .newlines)
    return path.hasPrefix("/") ? path : nil
  }

  func virtualSize(of base: DiskAttachment) throws -> UInt64 {
    switch base.format {
    case .raw:
      let attributes = try FileManager.default.attributesOfItem(atPath: base.path)
      return (attributes[.size] as? NSNumber)?.uint64Value ?? 0
    case .qcow2:
      guard let handle = FileHandle(forReadingAtPath: base.path) else {
        throw VolumeError("cannot read \(base.path)")
      }
      defer { try? handle.close() }
      let header = try handle.read(upToCount: 32) ?? Data()
      guard header.count == 32 else { throw VolumeError("\(base.path) is not a qcow2 file") }
      return header[24..<32].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }
  }

  /// The blocks its files take (a snapshot's file holds only what changed before it).
  public func allocatedBytes(of name: String) async -> Int64? {
    files(of: name).reduce(Int64(0)) { total, file in
      var info = stat()
      guard stat("\(directory)/\(file.name)", &info) == 0 else { return total }
      return total + Int64(info.st_blocks) * 512
    }
  }

  /// Removes every file of the volume (all generations).
  public func remove(_ name: String) async throws {
    for file in files(of: name) {
      try FileManager.default.removeItem(atPath: "\(directory)/\(file.name)")
      unlink("\(directory)/\(file.name)\(Self.sidecarSuffix)")
    }
  }

  /// A volume's files: `<name>.qcow2|.img` (generation 0) and `<name>.g<N>.qcow2`, one more
  /// per snapshot taken while it ran. The highest generation is the active disk.
  func files(of name: String) -> [(name: String, generation: Int, format: DiskAttachment.Format)] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return entries.compactMap { file -> (String, Int, DiskAttachment.Format)? in
      guard let parsed = Self.parse(file), parsed.volume == name else { return nil }
      return (file, parsed.generation, parsed.format)
    }.sorted { $0.1 < $1.1 }
  }

  static func parse(_ file: String) -> (
    volume: String, generation: Int, format: DiskAttachment.Format
  )? {
    let format: DiskAttachment.Format
    var stem: Substring
    if file.hasSuffix(".qcow2") {
      format = .qcow2
      stem = file.dropLast(6)
    } else if file.hasSuffix(".img") {
      format = .raw
      stem = file.dropLast(4)
    } else {
      return nil
    }
    var generation = 0
    if let dot = stem.lastIndex(of: "."), stem[stem.index(after: dot)...].first == "g",
      let number = Int(stem[stem.index(dot, offsetBy: 2)...])
    {
      generation = number
      stem = stem[..<dot]
    }
    return (String(stem), generation, format)
  }

  public func list() async throws -> [String] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return Set(entries.compactMap { Self.parse($0)?.volume }).sorted()
  }

  public func disk(of name: String) -> DiskAttachment? {
    files(of: name).last.map { DiskAttachment(path: "\(directory)/\($0.name)", format: $0.format) }
  }

  /// Older generations are other names of frozen snapshot disks that a running QEMU may
  /// reopen by name; once no VM runs on the volume they can go.
  public func compact(_ name: String) async {
    for file in files(of: name).dropLast() {
      unlink("\(directory)/\(file.name)")
      unlink("\(directory)/\(file.name)\(Self.sidecarSuffix)")
    }
  }

  /// The frozen disk is a hard link to the volume's current file (the same inode, so the
  /// running VM's open file and the snapshot are one); the overlay names it as its backing
  /// and becomes the next generation. Nothing is renamed: QEMU reopens its images by name
  /// when a migration ends.
  public func prepareFreeze(_ name: String, as snapshotName: String) async throws -> FreezePlan {
    guard let current = files(of: name).last else { throw VolumeError("no volume \(name)") }
    let currentDisk = DiskAttachment(path: "\(directory)/\(current.name)", format: current.format)
    let frozen = DiskAttachment(path: path(snapshotName, current.format), format: current.format)
    guard link(currentDisk.path, frozen.path) == 0 else {
      throw VolumeError("cannot link \(frozen.path): \(String(cString: strerror(errno)))")
    }
    let next = DiskAttachment(
      path: "\(directory)/\(name).g\(current.generation + 1).qcow2", format: .qcow2)
    do {
      if let backing = backing(of: currentDisk.path) {
        try writeSidecar(of: frozen.path, backing: backing)
      }
      try createOverlay(at: next, backing: frozen, virtualSize: try virtualSize(of: currentDisk))
    } catch {
      unlink(frozen.path)
      unlink(frozen.path + Self.sidecarSuffix)
      throw error
    }
    return FreezePlan(volume: name, frozen: frozen, next: next, previous: currentDisk)
  }

  func createOverlay(at target: DiskAttachment, backing: DiskAttachment, virtualSize: UInt64)
    throws
  {
    try createOverlay(at: target.path, backing: backing, virtualSize: virtualSize)
  }

  /// The VM writes its new top now: the frozen disk becomes root's and read-only to VMs
  /// (restores read it as a backing file; none may change it).
  public func commitFreeze(_ plan: FreezePlan) async throws {
    guard let owner else { return }
    do { try owner.share(plan.frozen.path) } catch { throw VolumeError("\(error)") }
  }

  public func abortFreeze(_ plan: FreezePlan) async {
    for path in [plan.next.path, plan.frozen.path] {
      unlink(path)
      unlink(path + Self.sidecarSuffix)
    }
  }

  public func collectGarbage(keep: Set<String>) async -> [String] {
    let names = (try? await list()) ?? []
    var needed = Set<String>()
    for name in names where !name.hasPrefix("snapshot-") || keep.contains(name) {
      guard let disk = disk(of: name) else { continue }
      needed.formUnion(backingChain(of: disk.path))
    }
    var removed: [String] = []
    for name in names where name.hasPrefix("snapshot-") && !keep.contains(name) {
      guard let disk = disk(of: name), !needed.contains(disk.path) else { continue }
      unlink(disk.path)
      unlink(disk.path + Self.sidecarSuffix)
      removed.append(name)
    }
    return removed
  }

  /// The files under `path`, from the sidecars the manager wrote.
  func backingChain(of path: String) -> [String] {
    var chain: [String] = []
    var current = path
    while chain.count < 64, let next = backing(of: current), !chain.contains(next) {
      chain.append(next)
      current = next
    }
    return chain
  }

  /// The recorded backing file of a disk of this store. A qcow2 overlay made before sidecars
  /// existed gets one from its header once (qcow2 metadata is QEMU's and ours, not the guest's;
  /// a raw file's contents are never read).
  func backing(of path: String) -> String? {
    if let recorded = readSidecar(of: path) { return recorded }
    guard path.hasPrefix(directory + "/"), path.hasSuffix(".qcow2"),
      !FileManager.default.fileExists(atPath: path + Self.sidecarSuffix),
      let legacy = Self.qcow2BackingFile(of: path)
    else { return nil }
    try? writeSidecar(of: path, backing: legacy)
    return legacy
  }

  /// The backing file name in a qcow2 header.
  static func qcow2BackingFile(of path: String) -> String? {
    guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
    defer { try? handle.close() }
    guard let header = try? handle.read(upToCount: 20), header.count == 20,
      header.prefix(4) == Data([0x51, 0x46, 0x49, 0xFB])
    else { return nil }
    let offset = header[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    let length = header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
    guard offset > 0, length > 0, length < 4096 else { return nil }
    try? handle.seek(toOffset: offset)
    guard let name = try? handle.read(upToCount: Int(length)) else { return nil }
    let text = String(decoding: name, as: UTF8.self)
    return text.hasPrefix("/") ? text : nil
  }
}
