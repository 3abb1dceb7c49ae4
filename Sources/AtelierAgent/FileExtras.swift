import AtelierAgentAPI
import AtelierHTTP
import CAtelierSys

#if canImport(Glibc)
  import Glibc
#endif

/// Listings to a depth, moves, user metadata (extended attributes, read) and what an entry's
/// symlink points at.
extension FileService {
  /// The type of what the symlink at `path` points at, or nil when that does not exist.
  static func targetKind(_ path: String) -> FileEntry.Kind? {
    var info = Glibc.stat()
    guard stat(path, &info) == 0 else { return nil }
    switch info.st_mode & S_IFMT {
    case S_IFREG: return .file
    case S_IFDIR: return .directory
    default: return .other
    }
  }

  /// The `user.e2b.*` attributes of `path` (not of what a symlink there points at), or nil.
  static func userMetadata(_ path: String) -> [String: String]? {
    let size = atelier_llistxattr(path, nil, 0)
    guard size > 0 else { return nil }
    var names = [CChar](repeating: 0, count: Int(size))
    let count = atelier_llistxattr(path, &names, UInt(size))
    guard count > 0 else { return nil }
    let prefix = FileMetadata.attributePrefix
    var metadata: [String: String] = [:]
    let bytes = names.prefix(Int(count)).map { UInt8(bitPattern: $0) }
    for nameBytes in bytes.split(separator: 0) {
      let name = String(decoding: nameBytes, as: UTF8.self)
      guard name.hasPrefix(prefix) else { continue }
      var value = [UInt8](repeating: 0, count: 65536)
      let length = atelier_lgetxattr(path, name, &value, UInt(value.count))
      guard length >= 0 else { continue }
      metadata[String(name.dropFirst(prefix.count))] = String(
        decoding: value.prefix(Int(length)), as: UTF8.self)
    }
    return metadata.isEmpty ? nil : metadata
  }

  /// Renames `source` to `destination`, creating the destination's parents (with the owner
  /// of the folder they are made in). Never follows a symlink at either end.
  static func move(_ request: MoveRequest) throws -> FileEntry {
    let source = try checkedPath(request.source)
    let destination = try checkedPath(request.destination)
    guard source != "/", destination != "/" else {
      throw APIError.forbidden("refusing to move / or onto /")
    }
    var info = Glibc.stat()
    guard lstat(source, &info) == 0 else { throw failure(errno, source) }
    if destination.hasPrefix(source + "/") {
      throw APIError.badRequest("cannot move \(source) into itself")
    }
    let parent = parentDirectory(of: destination)
    if !directoryExists(parent) { _ = try mkdir(MkdirRequest(path: parent)) }
    guard rename(source, destination) == 0 else { throw failure(errno, destination) }
    return try describe(path: destination)
  }

  /// The folder's entries and, down to `depth` levels, theirs (folders are entered, symlinks
  /// never), at most `FileListing.maxEntries` in all.
  static func list(path raw: String?, depth rawDepth: String? = nil) throws -> FileListing {
    let path = try checkedPath(raw)
    let depth =
      try rawDepth.map { text in
        guard let value = Int(text), value >= FileListing.depthRange.lowerBound else {
          throw APIError.badRequest("depth must be a whole number of at least 1")
        }
        // Deeper than the most listed is the most, as the document says.
        return min(value, FileListing.depthRange.upperBound)
      } ?? 1
    var lookup = (users: names("/etc/passwd"), groups: names("/etc/group"))
    var entries: [FileEntry] = []
    var truncated = false
    try listLevel(path, depth: depth, lookup: &lookup, into: &entries, truncated: &truncated)
    return FileListing(path: path, entries: entries, truncated: truncated ? true : nil)
  }

  static func listLevel(
    _ path: String, depth: Int, lookup: inout (users: [UInt32: String], groups: [UInt32: String]),
    into entries: inout [FileEntry], truncated: inout Bool, isTop: Bool = true
  ) throws {
    guard let directory = opendir(path) else {
      if isTop { throw failure(errno, path) }
      return
    }
    var level: [FileEntry] = []
    while let item = readdir(directory) {
      let name = withUnsafePointer(to: item.pointee.d_name) {
        $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
      }
      if name == "." || name == ".." { continue }
      let child = path == "/" ? "/\(name)" : "\(path)/\(name)"
      if let entry = try? entry(child, users: lookup.users, groups: lookup.groups) {
        level.append(entry)
      }
    }
    closedir(directory)
    level.sort { $0.name < $1.name }
    for entry in level {
      guard entries.count < FileListing.maxEntries else {
        truncated = true
        return
      }
      entries.append(entry)
      if depth > 1 && entry.type == .directory {
        try listLevel(
          entry.path, depth: depth - 1, lookup: &lookup, into: &entries, truncated: &truncated,
          isTop: false)
      }
    }
  }
}
