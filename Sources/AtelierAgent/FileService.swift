import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import AtelierTar
import Hummingbird
import Logging

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// Files in the guest: raw, streamed upload and download (binary-safe, never buffered whole),
/// listings, batch writes, and folders as tar streams.
enum FileService {
  // MARK: Paths, errors, ownership

  static func checkedPath(_ raw: String?) throws -> String {
    guard let raw, !raw.isEmpty else { throw APIError.badRequest("path is required") }
    guard raw.hasPrefix("/") else { throw APIError.badRequest("path must be absolute: \(raw)") }
    guard !raw.contains("\0") else { throw APIError.badRequest("path contains a NUL byte") }
    var parts: [Substring] = []
    for part in raw.split(separator: "/") where part != "." {
      if part == ".." { _ = parts.popLast() } else { parts.append(part) }
    }
    return "/" + parts.joined(separator: "/")
  }

  /// Turns errno from an operation on `path` into the API's error.
  static func failure(_ code: Int32, _ path: String) -> APIError {
    let reason = String(cString: strerror(code))
    switch code {
    case ENOENT: return APIError.notFound("\(path): no such file or directory")
    case EACCES, EPERM:
      return APIError(status: .forbidden, code: "FORBIDDEN", message: "\(path): permission denied")
    case EROFS:
      return APIError(
        status: .forbidden, code: "FORBIDDEN", message: "\(path): read-only file system")
    case EISDIR: return APIError.conflict("\(path) is a directory")
    case ENOTDIR: return APIError.conflict("\(path): a parent is not a directory")
    case ENOTEMPTY: return APIError.conflict("\(path) is not empty (use recursive=true)")
    case EEXIST: return APIError.conflict("\(path) already exists")
    case ENOSPC:
      return APIError(
        status: .init(code: 507), code: "RESOURCE_EXHAUSTED", message: "\(path): no space left")
    default: return APIError.internalError("\(path): \(reason)")
    }
  }

  static func parseMode(_ text: String?, default fallback: mode_t) throws -> mode_t {
    guard let text else { return fallback }
    guard let value = UInt32(text, radix: 8), value <= 0o7777 else {
      throw APIError.badRequest("mode must be octal, e.g. 0644 (got \(text))")
    }
    return mode_t(value)
  }

  /// `user`, `user:group`, or numeric ids. Nil keeps the default (the parent's owner).
  static func parseOwner(_ text: String?, path: String) throws -> (uid_t, gid_t) {
    if let text {
      let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
        .map(String.init)
      guard let user = parts.first, !user.isEmpty, parts.last?.isEmpty == false else {
        throw APIError.badRequest("owner must be user or user:group (got \(text))")
      }
      let uid: uid_t
      var gid: gid_t
      if let number = UInt32(user) {
        uid = number
        gid = number
      } else if let entry = GuestUser.resolve(user) {
        uid = entry.uid
        gid = entry.gid
      } else {
        throw APIError.notFound("unknown user \(user)")
      }
      if parts.count == 2 {
        if let number = UInt32(parts[1]) {
          gid = number
        } else if let group = groupId(parts[1]) {
          gid = group
        } else {
          throw APIError.notFound("unknown group \(parts[1])")
        }
      }
      return (uid, gid)
    }
    var info = Glibc.stat()
    let parent = parentDirectory(of: path)
    if stat(parent.isEmpty ? "/" : parent, &info) == 0 { return (info.st_uid, info.st_gid) }
    return (0, 0)
  }

  static func groupId(_ name: String) -> gid_t? {
    for line in (readTextFile("/etc/group") ?? "").split(separator: "\n") {
      let fields = line.split(separator: ":", omittingEmptySubsequences: false)
      if fields.count >= 3, fields[0] == name, let gid = UInt32(fields[2]) { return gid }
    }
    return nil
  }

  static func names(_ file: String) -> [UInt32: String] {
    var result: [UInt32: String] = [:]
    for line in (readTextFile(file) ?? "").split(separator: "\n") {
      let fields = line.split(separator: ":", omittingEmptySubsequences: false)
      if fields.count >= 3, let id = UInt32(fields[2]) { result[id] = String(fields[0]) }
    }
    return result
  }

  // MARK: Stat and list

  static func entry(_ path: String, users: [UInt32: String], groups: [UInt32: String]) throws
    -> FileEntry
  {
    var info = Glibc.stat()
    guard lstat(path, &info) == 0 else { throw failure(errno, path) }
    let kind: FileEntry.Kind
    var target: String?
    switch info.st_mode & S_IFMT {
    case S_IFREG: kind = .file
    case S_IFDIR: kind = .directory
    case S_IFLNK:
      kind = .symlink
      var buffer = [CChar](repeating: 0, count: 4097)
      let count = readlink(path, &buffer, 4096)
      if count > 0 {
        target = String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
      }
    default: kind = .other
    }
    let name = path == "/" ? "/" : String(path.split(separator: "/").last ?? "")
    return FileEntry(
      name: name, path: path, type: kind, size: Int64(info.st_size),
      mode: "0" + String(info.st_mode & 0o7777, radix: 8),
      owner: users[info.st_uid] ?? String(info.st_uid),
      group: groups[info.st_gid] ?? String(info.st_gid),
      modifiedAt: Double(info.st_mtim.tv_sec) + Double(info.st_mtim.tv_nsec) / 1e9,
      linkTarget: target, targetType: kind == .symlink ? targetKind(path) : nil,
      metadata: userMetadata(path))
  }

  static func describe(path raw: String?) throws -> FileEntry {
    let path = try checkedPath(raw)
    return try entry(path, users: names("/etc/passwd"), groups: names("/etc/group"))
  }

  // MARK: Download and upload

  static func download(path raw: String?) throws -> Response {
    let path = try checkedPath(raw)
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw failure(errno, path) }
    var info = Glibc.stat()
    fstat(fd, &info)
    guard info.st_mode & S_IFMT != S_IFDIR else {
      close(fd)
      throw APIError.conflict("\(path) is a directory; use /files/archive or /files/list")
    }
    let size = Int(info.st_size)
    let body = ResponseBody(contentLength: (info.st_mode & S_IFMT) == S_IFREG ? size : nil) {
      writer in
      defer { close(fd) }
      while true {
        let chunk = await BlockingIO.read(fd, size: 256 << 10)
        if chunk.isEmpty { break }
        try await writer.write(ByteBuffer(bytes: chunk))
      }
      try await writer.finish(nil)
    }
    return Response(
      status: .ok, headers: [.contentType: "application/octet-stream"], body: body)
  }

  /// Streams the body to a temporary file next to `path`, then renames it into place, so a
  /// broken upload never leaves a half-written file, and a symlink (or hard link) at `path`
  /// is replaced, never written through.
  static func upload(path raw: String?, mode: String?, owner: String?, body: RequestBody)
    async throws -> FileEntry
  {
    let path = try checkedPath(raw)
    let (fileMode, uid, gid) = try attributes(for: path, mode: mode, owner: owner)
    let fd = try createTemporary(beside: path, owner: owner)
    do {
      for try await buffer in body {
        let ok = await BlockingIO.write(fd.descriptor, Array(buffer.readableBytesView))
        if !ok { throw failure(errno, path) }
      }
      try fd.commit(to: path, uid: uid, gid: gid, mode: fileMode)
    } catch {
      fd.abandon()
      throw error
    }
    return try describe(path: path)
  }

  /// The mode and owner a file written at `path` gets: as asked, else what the file there
  /// had (never what a symlink there points at), else 0644 and the parent folder's owner.
  static func attributes(for path: String, mode: String?, owner: String?) throws
    -> (mode_t, uid_t, gid_t)
  {
    var existing = Glibc.stat()
    let exists = lstat(path, &existing) == 0
    if exists && existing.st_mode & S_IFMT == S_IFDIR {
      throw APIError.conflict("\(path) is a directory")
    }
    let regular = exists && existing.st_mode & S_IFMT == S_IFREG
    let fileMode = try parseMode(mode, default: regular ? existing.st_mode & 0o7777 : 0o644)
    let (uid, gid) =
      owner == nil && regular
      ? (existing.st_uid, existing.st_gid) : try parseOwner(owner, path: path)
    return (fileMode, uid, gid)
  }

  /// A new file next to `path` (its parents created), open for writing.
  static func createTemporary(beside path: String, owner: String?) throws -> TemporaryFile {
    let parent = parentDirectory(of: path)
    if !directoryExists(parent) { _ = try mkdir(MkdirRequest(path: parent, owner: owner)) }
    let temporary = "\(path).atelier-upload-\(getpid())-\(Int.random(in: 0..<1_000_000))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw failure(errno, path) }
    return TemporaryFile(path: temporary, descriptor: fd)
  }

  static func delete(path raw: String?, recursive: Bool) throws {
    let path = try checkedPath(raw)
    guard path != "/" else { throw APIError.forbidden("refusing to delete /") }
    var info = Glibc.stat()
    guard lstat(path, &info) == 0 else { throw failure(errno, path) }
    if info.st_mode & S_IFMT == S_IFDIR {
      if recursive {
        do { try FileManager.default.removeItem(atPath: path) } catch {
          throw failure(access(path, W_OK) == 0 ? EIO : errno, path)
        }
      } else if rmdir(path) != 0 {
        throw failure(errno, path)
      }
    } else if unlink(path) != 0 {
      throw failure(errno, path)
    }
  }

  static func mkdir(_ request: MkdirRequest) throws -> FileEntry {
    let path = try checkedPath(request.path)
    let mode = try parseMode(request.mode, default: 0o755)
    // The owner is checked even when every folder exists already (nothing to create).
    _ = try parseOwner(request.owner, path: path)
    // Create each missing parent with the requested owner.
    var current = ""
    for part in path.split(separator: "/") {
      current += "/\(part)"
      var info = Glibc.stat()
      if statFile(current, &info) == 0 {
        guard info.st_mode & S_IFMT == S_IFDIR else { throw failure(ENOTDIR, current) }
        continue
      }
      let (uid, gid) = try parseOwner(request.owner, path: current)
      guard Glibc.mkdir(current, 0o700) == 0 || errno == EEXIST else {
        throw failure(errno, current)
      }
      // Owner and mode through a descriptor of the folder itself: if something swapped a
      // symlink in meanwhile, the open fails rather than changing what it points at.
      let fd = open(current, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      guard fd >= 0 else { throw failure(errno, current) }
      defer { close(fd) }
      guard fchown(fd, uid, gid) == 0, fchmod(fd, mode) == 0 else { throw failure(errno, current) }
    }
    return try describe(path: path)
  }

  /// Each file is written to a temporary file and renamed into place: a symlink or hard
  /// link at its path is replaced, never written through.
  static func write(_ request: WriteFilesRequest) throws -> WriteFilesResult {
    var written: [FileEntry] = []
    for file in request.files {
      let path = try checkedPath(file.path)
      let bytes: [UInt8]
      switch file.encoding ?? .utf8 {
      case .utf8: bytes = Array(file.content.utf8)
      case .base64:
        guard let data = Data(base64Encoded: file.content) else {
          throw APIError.badRequest("\(path): content is not valid base64")
        }
        bytes = Array(data)
      }
      let mode = try parseMode(file.mode, default: 0o644)
      var existing = Glibc.stat()
      if lstat(path, &existing) == 0 && existing.st_mode & S_IFMT == S_IFDIR {
        throw APIError.conflict("\(path) is a directory")
      }
      let (uid, gid) = try parseOwner(file.owner, path: path)
      let temporary = try createTemporary(beside: path, owner: file.owner)
      do {
        var offset = 0
        while offset < bytes.count {
          let n = bytes[offset...].withUnsafeBytes {
            Glibc.write(temporary.descriptor, $0.baseAddress, $0.count)
          }
          guard n > 0 else { throw failure(errno, path) }
          offset += n
        }
        try temporary.commit(to: path, uid: uid, gid: gid, mode: mode)
      } catch {
        temporary.abandon()
        throw error
      }
      written.append(try describe(path: path))
    }
    return WriteFilesResult(written: written)
  }

  // MARK: Folders as tar

  static func tarOptions(_ arguments: [String]) -> SpawnOptions {
    SpawnOptions(
      executable: "tar", arguments: arguments,
      environment: ["PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C.UTF-8"],
      newSession: true)
  }

  static func archive(path raw: String?) throws -> Response {
    let path = try checkedPath(raw)
    guard directoryExists(path) else {
      var info = Glibc.stat()
      throw statFile(path, &info) == 0
        ? APIError.badRequest("\(path) is not a directory") : failure(ENOENT, path)
    }
    if let mount = kernelFileSystem(at: path) {
      throw APIError.forbidden(
        "\(path) holds \(mount), a kernel file system whose files never end (/proc/kcore): "
          + "archive a folder without it")
    }
    let tar = try RunningProcess.start(
      tarOptions(["-c", "-f", "-", "-C", path, "."]), stdin: false, stdout: true, stderr: false)
    let body = ResponseBody { writer in
      defer { tar.closeAll() }
      while true {
        let chunk = await BlockingIO.read(tar.stdout, size: 256 << 10)
        if chunk.isEmpty { break }
        try await writer.write(ByteBuffer(bytes: chunk))
      }
      _ = await tar.waitForExit()
      try await writer.finish(nil)
    }
    return Response(status: .ok, headers: [.contentType: "application/x-tar"], body: body)
  }

  /// File systems the kernel makes up (their files have no end, or are not files at all).
  static let kernelFileSystems: Set<Substring> = [
    "proc", "sysfs", "devtmpfs", "devpts", "securityfs", "cgroup", "cgroup2", "debugfs",
    "tracefs", "pstore", "bpf", "configfs", "mqueue", "hugetlbfs", "fusectl", "efivarfs",
    "binfmt_misc",
  ]

  /// The mount point of a kernel file system at, under or above `path`, if any: a tar of it
  /// would never end.
  static func kernelFileSystem(at path: String) -> String? {
    let lines = readTextFile("/proc/mounts")?.split(separator: "\n") ?? []
    let inside = path == "/" ? "/" : path + "/"
    for line in lines {
      let fields = line.split(separator: " ")
      guard fields.count > 2, kernelFileSystems.contains(fields[2]) else { continue }
      let mountPoint = String(fields[1])
      if mountPoint == path || mountPoint.hasPrefix(inside) || path.hasPrefix(mountPoint + "/") {
        return mountPoint
      }
    }
    return nil
  }

  /// Unpacks a tar stream with Atelier's own extractor (`AtelierTar`): every folder opened
  /// without following symlinks, files created fresh (never written through a link), owners
  /// set on the descriptors, no devices or FIFOs, no setuid bits, no `..` or absolute members.
  static func extract(path raw: String?, owner: String?, body: RequestBody) async throws
    -> FileEntry
  {
    let path = try checkedPath(raw)
    // Nothing at all is no archive (a tar stream ends with two zero blocks): refused before
    // anything is created.
    var chunks = body.makeAsyncIterator()
    var first = try await chunks.next()
    while let chunk = first, chunk.readableBytes == 0 { first = try await chunks.next() }
    guard let first else { throw APIError.badRequest("no tar stream: the body is empty") }
    if !directoryExists(path) { _ = try mkdir(MkdirRequest(path: path, owner: owner)) }
    let (uid, gid) = try parseOwner(owner, path: path + "/x")
    let extractor: TarExtractor
    do {
      extractor = try TarExtractor(
        directory: path,
        policy: TarExtractionPolicy(
          permissionMask: 0o777, owner: (uid, gid), symlinksMustStayInside: false))
    } catch {
      throw APIError.badRequest("cannot extract into \(path): \(error)")
    }
    do {
      try extractor.write(Array(first.readableBytesView))
      while let buffer = try await chunks.next() {
        try extractor.write(Array(buffer.readableBytesView))
      }
      try extractor.finish()
    } catch let error as TarError {
      throw APIError.badRequest("not a valid tar stream: \(error)")
    }
    if !extractor.skipped.isEmpty {
      // Devices, FIFOs and members that would land outside have no place in a sandbox's
      // files; the rest is there.
      Logger(label: "atelier.agent.files").warning(
        "\(extractor.skipped.count) tar member(s) skipped",
        metadata: ["path": "\(path)", "first": "\(extractor.skipped[0])"])
    }
    return try describe(path: path)
  }
}

/// A file being written under a temporary name; renamed over its real name when complete,
/// removed when abandoned. Its descriptor is closed exactly once.
final class TemporaryFile {
  let path: String
  private(set) var descriptor: Int32

  init(path: String, descriptor: Int32) {
    self.path = path
    self.descriptor = descriptor
  }

  /// Owner and mode set through the descriptor, data synced, then renamed into place.
  func commit(to target: String, uid: uid_t, gid: gid_t, mode: mode_t) throws {
    guard fchown(descriptor, uid, gid) == 0, fchmod(descriptor, mode) == 0, fsync(descriptor) == 0
    else { throw FileService.failure(errno, target) }
    closeDescriptor()
    guard rename(path, target) == 0 else { throw FileService.failure(errno, target) }
  }

  func abandon() {
    closeDescriptor()
    unlink(path)
  }

  private func closeDescriptor() {
    if descriptor >= 0 { close(descriptor) }
    descriptor = -1
  }
}

/// The folder holding `path` ("/" for top-level entries).
func parentDirectory(of path: String) -> String {
  guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
  return String(path[..<slash])
}
