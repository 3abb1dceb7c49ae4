import AtelierAgentAPI
import AtelierCore
import AtelierHost
import Foundation
import Hummingbird

/// `filesystem.Filesystem`'s unary calls on the agent's file operations. The agent acts as
/// root; folders made for another user are given to that user.
struct EnvdFilesystem<Context: RequestContext>: Sendable {
  let routes: EnvdRoutes<Context>

  func addRoutes(to router: Router<Context>) {
    routes.unary(router, "filesystem.Filesystem/Stat", Envd.PathRequest.self) { request, call in
      Envd.EntryResponse(entry: Self.entry(try await Self.stat(try call.path(request.path), call)))
    }
    routes.unary(router, "filesystem.Filesystem/ListDir", Envd.ListDirRequest.self) {
      request, call in
      let path = try call.path(request.path)
      let depth = max(1, min(Int(request.depth?.value ?? 1), FileListing.depthRange.upperBound))
      let listing = try await call.agent.json(
        .GET, "/files/list?path=\(Self.query(path))&depth=\(depth)", body: String?.none,
        as: FileListing.self)
      return Envd.ListDirResponse(entries: listing.entries.map(Self.entry))
    }
    routes.unary(router, "filesystem.Filesystem/MakeDir", Envd.PathRequest.self) {
      request, call in
      let path = try call.path(request.path)
      if let existing = try? await Self.stat(path, call) {
        throw existing.type == .directory
          ? ConnectError(.alreadyExists, "directory \(path) already exists")
          : ConnectError(.invalidArgument, "\(path) already exists and is not a directory")
      }
      let made = try await call.agent.json(
        .POST, "/files/mkdir", body: MkdirRequest(path: path, owner: call.owner),
        as: FileEntry.self)
      return Envd.EntryResponse(entry: Self.entry(made))
    }
    routes.unary(router, "filesystem.Filesystem/Move", Envd.MoveRequest.self) { request, call in
      let moved = try await call.agent.json(
        .POST, "/files/move",
        body: MoveRequest(
          source: try call.path(request.source), destination: try call.path(request.destination)),
        as: FileEntry.self)
      return Envd.EntryResponse(entry: Self.entry(moved))
    }
    routes.unary(router, "filesystem.Filesystem/Remove", Envd.PathRequest.self) {
      request, call in
      let path = try call.path(request.path)
      try await call.agent.send(
        .DELETE, "/files?path=\(Self.query(path))&recursive=true", body: String?.none)
      return Envd.Empty()
    }
  }

  static func stat(_ path: String, _ call: EnvdCall) async throws -> FileEntry {
    try await call.agent.json(
      .GET, "/files/stat?path=\(query(path))", body: String?.none, as: FileEntry.self)
  }

  /// A value for a query string.
  static func query(_ value: String) -> String {
    var allowed = CharacterSet.urlQueryAllowed
    allowed.remove(charactersIn: "&=+?#")
    return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
  }

  /// An entry as envd describes it: a symlink has the type of what it points at (and
  /// `isSymlink`), as Go's `os.Stat` would; mode is the permission bits.
  static func entry(_ entry: FileEntry) -> Envd.EntryInfo {
    let kind = entry.type == .symlink ? (entry.targetType ?? .other) : entry.type
    let type: String =
      switch kind {
      case .file: "FILE_TYPE_FILE"
      case .directory: "FILE_TYPE_DIRECTORY"
      case .symlink: "FILE_TYPE_SYMLINK"
      case .other: "FILE_TYPE_UNSPECIFIED"
      }
    let bits = UInt32(entry.mode, radix: 8) ?? 0
    return Envd.EntryInfo(
      name: entry.name, type: type, path: entry.path, size: String(entry.size),
      mode: bits & 0o777, permissions: permissions(kind, bits), owner: entry.owner,
      group: entry.group,
      modifiedTime: SandboxViews.timestamp(Date(timeIntervalSince1970: entry.modifiedAt)),
      symlinkTarget: entry.linkTarget, metadata: entry.metadata,
      isSymlink: entry.type == .symlink ? true : nil)
  }

  /// `drwxr-xr-x`, as Go's `FileMode.String()` prints it.
  static func permissions(_ kind: FileEntry.Kind, _ bits: UInt32) -> String {
    let first: Character = kind == .directory ? "d" : "-"
    let letters: [Character] = ["r", "w", "x"]
    var text = String(first)
    for index in 0..<9 {
      let bit = UInt32(1) << UInt32(8 - index)
      text.append(bits & bit != 0 ? letters[index % 3] : "-")
    }
    return text
  }
}
