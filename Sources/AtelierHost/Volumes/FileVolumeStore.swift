import Foundation
import Logging

/// Volumes as files in one folder: a reflink copy where the file system has it (XFS, btrfs),
/// else a qcow2 overlay backed by the base file. Never a full copy.
public struct FileVolumeStore: VolumeStore {
  public let name = "file"
  let directory: String
  let logger: Logger

  public init(directory: String, logger: Logger = Logger(label: "atelier.volumes.file")) {
    self.directory = directory
    self.logger = logger
  }

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
        return DiskAttachment(path: target, format: .raw)
      }
    }
    let target = path(name, .qcow2)
    let size = max(try virtualSize(of: base), minimumSizeBytes)
    try Qcow2Overlay.create(
      at: target, backingFile: base.path, backingFormat: base.format, virtualSize: size)
    return DiskAttachment(path: target, format: .qcow2)
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
    for file in files(of: name).dropLast() { unlink("\(directory)/\(file.name)") }
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
      try Qcow2Overlay.create(
        at: next.path, backingFile: frozen.path, backingFormat: frozen.format,
        virtualSize: try virtualSize(of: currentDisk))
    } catch {
      unlink(frozen.path)
      throw error
    }
    return FreezePlan(volume: name, frozen: frozen, next: next, previous: currentDisk)
  }

  public func commitFreeze(_ plan: FreezePlan) async throws {}

  public func abortFreeze(_ plan: FreezePlan) async {
    unlink(plan.next.path)
    unlink(plan.frozen.path)
  }

  public func collectGarbage(keep: Set<String>) async -> [String] {
    let names = (try? await list()) ?? []
    var needed = Set<String>()
    for name in names where !name.hasPrefix("snapshot-") || keep.contains(name) {
      guard let disk = disk(of: name) else { continue }
      needed.formUnion(Self.backingChain(of: disk.path))
    }
    var removed: [String] = []
    for name in names where name.hasPrefix("snapshot-") && !keep.contains(name) {
      guard let disk = disk(of: name), !needed.contains(disk.path) else { continue }
      unlink(disk.path)
      removed.append(name)
    }
    return removed
  }

  /// The files under a qcow2 file, read from each header's backing file name.
  static func backingChain(of path: String) -> [String] {
    var chain: [String] = []
    var current = path
    while chain.count < 64, let handle = FileHandle(forReadingAtPath: current) {
      defer { try? handle.close() }
      guard let header = try? handle.read(upToCount: 20), header.count == 20,
        header.prefix(4) == Data([0x51, 0x46, 0x49, 0xFB])
      else { break }
      let offset = header[8..<16].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
      let length = header[16..<20].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
      guard offset > 0, length > 0, length < 4096 else { break }
      try? handle.seek(toOffset: offset)
      guard let name = try? handle.read(upToCount: Int(length)) else { break }
      current = String(decoding: name, as: UTF8.self)
      chain.append(current)
    }
    return chain
  }
}

/// `FICLONE`: a copy-on-write copy of a whole file, where the file system supports it.
enum Reflink {
  static let ficlone: UInt = 0x4004_9409

  /// True when cloned; false when the file system cannot (nothing is left behind then).
  static func clone(from source: String, to target: String) throws -> Bool {
    let input = open(source, O_RDONLY | O_CLOEXEC)
    guard input >= 0 else {
      throw VolumeError("cannot open \(source): \(String(cString: strerror(errno)))")
    }
    defer { close(input) }
    let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard output >= 0 else {
      throw VolumeError("cannot create \(target): \(String(cString: strerror(errno)))")
    }
    let result = ioctl(output, ficlone, input)
    close(output)
    if result == 0 { return true }
    unlink(target)
    return false
  }
}
