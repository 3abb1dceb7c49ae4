/// Batches and streaming for exec.

public struct ExecBatchRequest: Codable, Sendable {
  public var commands: [ExecRequest]
  /// Stop at the first command that exits non-zero (default true).
  public var stopOnError: Bool?
  public init(commands: [ExecRequest], stopOnError: Bool? = nil) {
    self.commands = commands
    self.stopOnError = stopOnError
  }
  /// How many commands one batch may hold.
  public static let commandCount = 1...100
}

public struct ExecBatchResult: Codable, Sendable {
  public var results: [ExecResult]
  /// True when every command ran and exited 0.
  public var ok: Bool
  public init(results: [ExecResult], ok: Bool) {
    self.results = results
    self.ok = ok
  }
}

/// Frames of `…/exec/stream` (WebSocket, JSON text frames). The client sends an `ExecRequest`
/// first, then `stdin`, `closeStdin` and `signal` frames; the agent sends `started`, `stdout`,
/// `stderr` and finally `exit`, then closes.
public struct ExecStreamFrame: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    case started, stdout, stderr, exit, error
    case stdin, closeStdin, signal
  }
  public var type: Kind
  public var data: String?
  public var pid: Int32?
  public var exitCode: Int32?
  public var timedOut: Bool?
  public var durationMs: Int?
  /// For `signal`: a number or a name (TERM, KILL, INT, HUP).
  public var signal: String?
  public var message: String?

  public init(
    type: Kind, data: String? = nil, pid: Int32? = nil, exitCode: Int32? = nil,
    timedOut: Bool? = nil, durationMs: Int? = nil, signal: String? = nil, message: String? = nil
  ) {
    self.type = type
    self.data = data
    self.pid = pid
    self.exitCode = exitCode
    self.timedOut = timedOut
    self.durationMs = durationMs
    self.signal = signal
    self.message = message
  }
}
