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

  public func clone(base: DiskAttachment, to name: String) async throws -> DiskAttachment {
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    if base.format == .raw {
      let target = path(name, .raw)
      if try Reflink.clone(from: base.path, to: target) {
        return DiskAttachment(path: target, format: .raw)
      }
    }
    let target = path(name, .qcow2)
    let size = try virtualSize(of: base)
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

  public func remove(_ name: String) async throws {
    for format in [DiskAttachment.Format.qcow2, .raw] {
      let file = path(name, format)
      if FileManager.default.fileExists(atPath: file) {
        try FileManager.default.removeItem(atPath: file)
      }
    }
  }

  public func list() async throws -> [String] {
    let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return files.compactMap { file in
      for suffix in [".qcow2", ".img"] where file.hasSuffix(suffix) {
        return String(file.dropLast(suffix.count))
      }
      return nil
    }.sorted()
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
