/// Git, metrics and terminals.

public struct GitCommitInfo: Codable, Sendable, Equatable {
  public var hash: String
  public var message: String
  public var author: String
  /// Seconds since 1970.
  public var date: Double
  public init(hash: String, message: String, author: String, date: Double) {
    self.hash = hash
    self.message = message
    self.author = author
    self.date = date
  }
}

public struct GitRepoStatus: Codable, Sendable, Equatable {
  public var path: String
  public var branch: String?
  public var dirty: Bool
  public var ahead: Int
  public var behind: Int
  public var changedFiles: [String]
  public var lastCommit: GitCommitInfo?
  public init(
    path: String, branch: String?, dirty: Bool, ahead: Int, behind: Int, changedFiles: [String],
    lastCommit: GitCommitInfo?
  ) {
    self.path = path
    self.branch = branch
    self.dirty = dirty
    self.ahead = ahead
    self.behind = behind
    self.changedFiles = changedFiles
    self.lastCommit = lastCommit
  }
}

public struct GitStatusResponse: Codable, Sendable {
  public var repos: [GitRepoStatus]
  public init(repos: [GitRepoStatus]) { self.repos = repos }
}

public struct GitFileDiff: Codable, Sendable, Equatable {
  public var path: String
  public var added: Int
  public var removed: Int
  public init(path: String, added: Int, removed: Int) {
    self.path = path
    self.added = added
    self.removed = removed
  }
}

public struct GitRepoDiff: Codable, Sendable {
  public var path: String
  public var files: [GitFileDiff]
  /// The unified diff, capped.
  public var patch: String
  public init(path: String, files: [GitFileDiff], patch: String) {
    self.path = path
    self.files = files
    self.patch = patch
  }
}

public struct GitDiffResponse: Codable, Sendable {
  public var repos: [GitRepoDiff]
  public init(repos: [GitRepoDiff]) { self.repos = repos }
}

public struct GitRepoRequest: Codable, Sendable {
  public var repoPath: String
  public var message: String?
  public init(repoPath: String, message: String? = nil) {
    self.repoPath = repoPath
    self.message = message
  }
}

public struct GitCommandResult: Codable, Sendable {
  public var ok: Bool
  public var commit: String?
  public var output: String
  public init(ok: Bool, commit: String?, output: String) {
    self.ok = ok
    self.commit = commit
    self.output = output
  }
}

public struct GuestMetrics: Codable, Sendable {
  public struct CPU: Codable, Sendable {
    public var count: Int
    /// Busy share over a short sample, 0–100.
    public var usagePercent: Double
    public init(count: Int, usagePercent: Double) {
      self.count = count
      self.usagePercent = usagePercent
    }
  }
  public struct Memory: Codable, Sendable {
    public var totalBytes: Int64
    public var usedBytes: Int64
    public var availableBytes: Int64
    public init(totalBytes: Int64, usedBytes: Int64, availableBytes: Int64) {
      self.totalBytes = totalBytes
      self.usedBytes = usedBytes
      self.availableBytes = availableBytes
    }
  }
  public struct Disk: Codable, Sendable {
    public var path: String
    public var totalBytes: Int64
    public var usedBytes: Int64
    public var freeBytes: Int64
    public init(path: String, totalBytes: Int64, usedBytes: Int64, freeBytes: Int64) {
      self.path = path
      self.totalBytes = totalBytes
      self.usedBytes = usedBytes
      self.freeBytes = freeBytes
    }
  }
  public var cpu: CPU
  public var memory: Memory
  public var disk: Disk
  public var load: [Double]
  public var uptimeSeconds: Double
  public var processCount: Int
  public var agentRssBytes: Int64

  public init(
    cpu: CPU, memory: Memory, disk: Disk, load: [Double], uptimeSeconds: Double,
    processCount: Int, agentRssBytes: Int64
  ) {
    self.cpu = cpu
    self.memory = memory
    self.disk = disk
    self.load = load
    self.uptimeSeconds = uptimeSeconds
    self.processCount = processCount
    self.agentRssBytes = agentRssBytes
  }
}

public struct TerminalCreateRequest: Codable, Sendable {
  /// Default: `bash -l` as dev where both exist, else `sh -l`.
  public var command: [String]?
  public var user: String?
  public var cwd: String?
  public var cols: Int?
  public var rows: Int?
  public var title: String?
  public init(
    command: [String]? = nil, user: String? = nil, cwd: String? = nil, cols: Int? = nil,
    rows: Int? = nil, title: String? = nil
  ) {
    self.command = command
    self.user = user
    self.cwd = cwd
    self.cols = cols
    self.rows = rows
    self.title = title
  }
}

public struct TerminalSession: Codable, Sendable, Equatable {
  public var id: String
  public var title: String
  public var command: [String]
  public var user: String
  public var pid: Int32
  public var cols: Int
  public var rows: Int
  /// Seconds since 1970.
  public var createdAt: Double
  public var clients: Int
  public init(
    id: String, title: String, command: [String], user: String, pid: Int32, cols: Int, rows: Int,
    createdAt: Double, clients: Int
  ) {
    self.id = id
    self.title = title
    self.command = command
    self.user = user
    self.pid = pid
    self.cols = cols
    self.rows = rows
    self.createdAt = createdAt
    self.clients = clients
  }
}

/// Control frames on a terminal WebSocket (JSON text). Output flows as binary frames; input
/// may be binary frames or `input` text frames.
public struct TerminalControlFrame: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable, CaseIterable { case input, resize, exit }
  public var type: Kind
  public var data: String?
  public var cols: Int?
  public var rows: Int?
  public var exitCode: Int32?
  public init(
    type: Kind, data: String? = nil, cols: Int? = nil, rows: Int? = nil, exitCode: Int32? = nil
  ) {
    self.type = type
    self.data = data
    self.cols = cols
    self.rows = rows
    self.exitCode = exitCode
  }
}
