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

  public init(
    name: String, path: String, type: Kind, size: Int64, mode: String, owner: String,
    group: String, modifiedAt: Double, linkTarget: String? = nil
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
  }
}

public struct FileListing: Codable, Sendable, Equatable {
  public var path: String
  public var entries: [FileEntry]
  public init(path: String, entries: [FileEntry]) {
    self.path = path
    self.entries = entries
  }
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
    /// `utf8` (default) or `base64`.
    public var encoding: String?
    public var mode: String?
    public var owner: String?
    public init(
      path: String, content: String, encoding: String? = nil, mode: String? = nil,
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
