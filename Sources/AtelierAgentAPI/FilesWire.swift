/// Files in the guest: listings, stats and batch writes.

public struct FileEntry: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case file, directory, symlink, other }
  public var name: String
  public var path: String
  public var type: Kind
  public var size: Int64
  /// Permission bits as an octal string, e.g. "0644".
  public var mode: String
  public var owner: String
  public var group: String
  /// Seconds since 1970.
  public var modifiedAt: Double
  public var linkTarget: String?
  /// For a symlink: the type of what it points at (nil when that does not exist).
  public var targetType: Kind?
  /// User metadata (`user.e2b.*` extended attributes), when there is any.
  public var metadata: [String: String]?

  public init(
    name: String, path: String, type: Kind, size: Int64, mode: String, owner: String,
    group: String, modifiedAt: Double, linkTarget: String? = nil, targetType: Kind? = nil,
    metadata: [String: String]? = nil
  ) {
    self.name = name
    self.path = path
    self.type = type
    self.size = size
    self.mode = mode
    self.owner = owner
    self.group = group
    self.modifiedAt = modifiedAt
    self.linkTarget = linkTarget
    self.targetType = targetType
    self.metadata = metadata
  }
}

public struct FileListing: Codable, Sendable, Equatable {
  public var path: String
  public var entries: [FileEntry]
  /// More entries than one listing holds (`maxEntries`) were there.
  public var truncated: Bool?
  public init(path: String, entries: [FileEntry], truncated: Bool? = nil) {
    self.path = path
    self.entries = entries
    self.truncated = truncated
  }
  /// How deep a listing may go, and how many entries it may hold.
  public static let depthRange = 1...64
  public static let maxEntries = 100_000
}

public struct MkdirRequest: Codable, Sendable {
  public var path: String
  /// Octal string, default "0755".
  public var mode: String?
  /// `user` or `user:group`; default: the owner of the parent folder.
  public var owner: String?
  public init(path: String, mode: String? = nil, owner: String? = nil) {
    self.path = path
    self.mode = mode
    self.owner = owner
  }
}

public struct WriteFilesRequest: Codable, Sendable {
  public struct File: Codable, Sendable {
    public var path: String
    public var content: String
    public enum Encoding: String, Codable, Sendable, CaseIterable { case utf8, base64 }
    /// `utf8` by default.
    public var encoding: Encoding?
    public var mode: String?
    public var owner: String?
    public init(
      path: String, content: String, encoding: Encoding? = nil, mode: String? = nil,
      owner: String? = nil
    ) {
      self.path = path
      self.content = content
      self.encoding = encoding
      self.mode = mode
      self.owner = owner
    }
  }
  public var files: [File]
  public init(files: [File]) { self.files = files }
}

public struct WriteFilesResult: Codable, Sendable {
  public var written: [FileEntry]
  public init(written: [FileEntry]) { self.written = written }
}

/// How guest paths, modes, owners and user names given to the agent must look (the agent's
/// checks and the API document share these).
public enum GuestFormats {
  /// Absolute, without NUL bytes.
  public static let pathPattern = "^/[^\\u0000]*$"
  /// Octal permissions, e.g. `0644` (at most 0o7777).
  public static let modePattern = "^0?[0-7]{1,4}$"
  /// `user` or `user:group`, names or numeric ids.
  public static let ownerPattern = "^[^:]+(:[^:]+)?$"
  /// A user name (or a numeric id) in the guest.
  public static let userPattern = "^[a-z_][a-z0-9_.-]{0,31}$|^[0-9]+$"
  /// A service or dev command name.
  public static let namePattern = "^[a-z0-9_-]{1,40}$"
  public static let portRange = 1...65535
  public static let terminalSizeRange = 1...1000
}

/// `POST /files/move`: renames a file or folder (the destination's parents are created).
public struct MoveRequest: Codable, Sendable {
  public var source: String
  public var destination: String
  public init(source: String, destination: String) {
    self.source = source
    self.destination = destination
  }
}

/// User metadata on a file: `user.e2b.<key>` extended attributes (what E2B's envd keeps),
/// shown in `FileEntry.metadata`. (Read only: nothing sets them through the agent yet.)
public enum FileMetadata {
  /// The extended-attribute namespace the keys live in.
  public static let attributePrefix = "user.e2b."
}

/// One line of `GET /files/watch`: `started` once the watch is in place, then one `event` per
/// change under the folder (`name` relative to it).
public struct WatchEventFrame: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case started, event }
  public enum Change: String, Codable, Sendable, CaseIterable {
    case create, write, remove, rename, chmod
  }
  public var type: Kind
  public var name: String?
  public var change: Change?
  /// The entry as it is after the change (when asked for, and it still exists).
  public var entry: FileEntry?
  public init(type: Kind, name: String? = nil, change: Change? = nil, entry: FileEntry? = nil) {
    self.type = type
    self.name = name
    self.change = change
    self.entry = entry
  }
}
