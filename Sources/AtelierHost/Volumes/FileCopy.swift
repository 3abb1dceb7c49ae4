import CAtelierSys
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Point-in-time copies of large, mostly sparse files (disks, guest memory).
public enum FileCopy {
  public enum Method: String, Sendable {
    /// `FICLONE`: the new file shares the old one's blocks until either is written.
    case reflink
    /// The allocated extents only, holes left as holes.
    case sparse
  }

  /// Copies the open file `source` (read from offset 0 to its size) to a new file `target`
  /// (which must not exist) with `mode`: a reflink where the file system has one, else a
  /// sparse copy. On failure nothing is left at `target`.
  @discardableResult
  public static func copy(from source: Int32, to target: String, mode: mode_t = 0o600) throws
    -> Method
  {
    var info = stat()
    guard fstat(source, &info) == 0 else { throw VolumeError("cannot stat the copy's source") }
    let output = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
    guard output >= 0 else {
      throw VolumeError("cannot create \(target): \(String(cString: strerror(errno)))")
    }
    defer { close(output) }
    if ioctl(output, Reflink.ficlone, source) == 0 { return .reflink }
    var copied: Int64 = 0
    guard atelier_sparse_copy(source, output, Int64(info.st_size), &copied) == 0 else {
      let reason = String(cString: strerror(errno))
      unlink(target)
      throw VolumeError("cannot copy into \(target): \(reason)")
    }
    return .sparse
  }

  /// `copy(from:to:)` of the file at `source` (opened without following a link, and required
  /// to be a plain file).
  @discardableResult
  public static func copy(file source: String, to target: String, mode: mode_t = 0o600) throws
    -> Method
  {
    let input = try openPlainFile(source)
    defer { close(input) }
    return try copy(from: input, to: target, mode: mode)
  }

  /// Opens a regular file for reading, refusing links and special files (paths in folders a
  /// VM user owns are that user's to swap).
  public static func openPlainFile(_ path: String) throws -> Int32 {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else {
      throw VolumeError("cannot open \(path): \(String(cString: strerror(errno)))")
    }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
      close(fd)
      throw VolumeError("\(path) is not a plain file")
    }
    return fd
  }

  /// Bytes the file's blocks take on disk.
  public static func allocatedBytes(_ path: String) -> Int64 {
    var info = stat()
    guard lstat(path, &info) == 0 else { return 0 }
    return Int64(info.st_blocks) * 512
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
