/// The agent's process table: commands that outlive the request that started them, which
/// clients attach to by pid (the E2B adapter's `process.Process` service maps onto these).

/// `POST /processes`: starts a process and streams its events (`ProcessEventFrame`, one JSON
/// object per line) from `start` to `end`. The process does not end with the stream.
public struct ProcessStartRequest: Codable, Sendable {
  /// The executable and its arguments. `/bin/bash` runs `/bin/sh` where the guest has no bash.
  public var argv: [String]
  public var env: [String: String]?
  public var cwd: String?
  /// A guest user (default: `dev` where it exists, else `root`).
  public var user: String?
  /// Run on a pseudo-terminal of this size (output then comes as `pty`).
  public var pty: TerminalSize?
  /// Keep stdin open for `input` (default false: /dev/null).
  public var stdin: Bool?
  /// A name the process can be found by.
  public var tag: String?
  /// Killed (its whole process group) after this long.
  public var timeoutMs: Int?

  public init(
    argv: [String], env: [String: String]? = nil, cwd: String? = nil, user: String? = nil,
    pty: TerminalSize? = nil, stdin: Bool? = nil, tag: String? = nil, timeoutMs: Int? = nil
  ) {
    self.argv = argv
    self.env = env
    self.cwd = cwd
    self.user = user
    self.pty = pty
    self.stdin = stdin
    self.tag = tag
    self.timeoutMs = timeoutMs
  }

  /// Why the request cannot run, or nil.
  public var validationProblem: String? {
    guard let executable = argv.first, !executable.isEmpty else { return "argv is empty" }
    if argv.contains(where: { $0.utf8.contains(0) }) { return "argv contains a NUL byte" }
    if let timeoutMs, timeoutMs < 1 { return "timeoutMs must be at least 1" }
    if let pty,
      !GuestFormats.terminalSizeRange.contains(pty.cols)
        || !GuestFormats.terminalSizeRange.contains(pty.rows)
    {
      return "pty cols and rows must be between 1 and 1000"
    }
    return nil
  }
}

public struct TerminalSize: Codable, Sendable, Equatable {
  public var cols: Int
  public var rows: Int
  public init(cols: Int, rows: Int) {
    self.cols = cols
    self.rows = rows
  }
}

/// One line of a process's event stream.
public struct ProcessEventFrame: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable, CaseIterable {
    case start, stdout, stderr, pty, end
  }
  public var type: Kind
  public var pid: Int32?
  /// Output bytes, base64.
  public var data: String?
  /// For `end`: the exit code (-1 when killed by a signal), whether it exited by itself,
  /// how it ended ("exit status 3", "signal: killed"), and that again unless it exited 0.
  public var exitCode: Int32?
  public var exited: Bool?
  public var status: String?
  public var error: String?

  public init(
    type: Kind, pid: Int32? = nil, data: String? = nil, exitCode: Int32? = nil,
    exited: Bool? = nil, status: String? = nil, error: String? = nil
  ) {
    self.type = type
    self.pid = pid
    self.data = data
    self.exitCode = exitCode
    self.exited = exited
    self.status = status
    self.error = error
  }
}

/// A process in the table.
public struct GuestProcess: Codable, Sendable, Equatable {
  public var pid: Int32
  public var tag: String?
  public var argv: [String]
  /// What the request gave (not the user's whole environment).
  public var env: [String: String]
  public var cwd: String?
  public var user: String
  public var pty: Bool
  public init(
    pid: Int32, tag: String?, argv: [String], env: [String: String], cwd: String?, user: String,
    pty: Bool
  ) {
    self.pid = pid
    self.tag = tag
    self.argv = argv
    self.env = env
    self.cwd = cwd
    self.user = user
    self.pty = pty
  }
}

/// Input for a process: to its stdin, or to its terminal when it has one.
public struct ProcessInputRequest: Codable, Sendable {
  /// Bytes, base64.
  public var data: String
  public init(data: String) { self.data = data }
}

public struct ProcessSignalRequest: Codable, Sendable {
  /// A number or a name (TERM, KILL, INT, HUP, QUIT, USR1, USR2).
  public var signal: String
  public init(signal: String) { self.signal = signal }
}

/// `PUT /system/environment`: the sandbox-wide environment, replacing the previous one. Every
/// command, terminal, service and process started from then on gets it (under what the
/// request itself sets).
public struct GuestEnvironmentRequest: Codable, Sendable {
  public var env: [String: String]
  public init(env: [String: String]) { self.env = env }
}

/// How many variables the agent now gives (never their values).
public struct GuestEnvironmentStatus: Codable, Sendable {
  public var variables: Int
  public init(variables: Int) { self.variables = variables }
}

/// A sandbox-wide environment: given to every command, terminal and service in the guest.
public enum SandboxEnvironment {
  /// A variable name: what a POSIX shell can name.
  public static let namePattern = "^[A-Za-z_][A-Za-z0-9_]*$"
  public static let maxVariables = 256
  /// All names and values together, in bytes.
  public static let maxBytes = 64 << 10

  /// Why `environment` cannot be a sandbox's environment, or nil when it can.
  public static func problem(_ environment: [String: String]) -> String? {
    if environment.count > maxVariables { return "at most \(maxVariables) environment variables" }
    var bytes = 0
    for (name, value) in environment {
      guard let first = name.utf8.first, first == UInt8(ascii: "_") || isLetter(first),
        name.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || isLetter($0) || isDigit($0) })
      else { return "invalid environment variable name \(name.debugDescription)" }
      if value.utf8.contains(0) { return "the value of \(name) contains a NUL byte" }
      bytes += name.utf8.count + value.utf8.count
    }
    return bytes > maxBytes ? "the environment is larger than \(maxBytes) bytes" : nil
  }

  static func isLetter(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte)
      || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(byte)
  }
  static func isDigit(_ byte: UInt8) -> Bool {
    (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
  }
}
