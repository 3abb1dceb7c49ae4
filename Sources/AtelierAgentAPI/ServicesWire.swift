/// Long-running processes the agent supervises: services (from the image or the manager) and
/// dev commands (a service with an optional port).

public struct ServiceDefinition: Codable, Sendable, Equatable {
  public enum RestartPolicy: String, Codable, Sendable, CaseIterable {
    case always, onFailure = "on-failure", never
  }
  public var command: String
  public var cwd: String?
  public var env: [String: String]?
  public var user: String?
  public var restart: RestartPolicy?
  public var port: Int?
  /// Start when the agent starts (services declared in the image).
  public var autostart: Bool?

  public init(
    command: String, cwd: String? = nil, env: [String: String]? = nil, user: String? = nil,
    restart: RestartPolicy? = nil, port: Int? = nil, autostart: Bool? = nil
  ) {
    self.command = command
    self.cwd = cwd
    self.env = env
    self.user = user
    self.restart = restart
    self.port = port
    self.autostart = autostart
  }
}

public struct ServiceStatus: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable, CaseIterable {
    case running, stopped, crashed, starting
  }
  public var name: String
  public var kind: String
  public var status: State
  public var command: String
  public var pid: Int32?
  /// Seconds since 1970.
  public var startedAt: Double?
  public var exitCode: Int32?
  public var restarts: Int
  public var port: Int?
  /// Whether something listens on `port` in the guest.
  public var listening: Bool?

  public init(
    name: String, kind: String, status: State, command: String, pid: Int32?, startedAt: Double?,
    exitCode: Int32?, restarts: Int, port: Int?, listening: Bool?
  ) {
    self.name = name
    self.kind = kind
    self.status = status
    self.command = command
    self.pid = pid
    self.startedAt = startedAt
    self.exitCode = exitCode
    self.restarts = restarts
    self.port = port
    self.listening = listening
  }
}

/// `POST /dev/{name}/start`.
public struct DevCommandRequest: Codable, Sendable {
  public var command: String
  public var port: Int?
  public var workdir: String?
  public var env: [String: String]?
  public init(
    command: String, port: Int? = nil, workdir: String? = nil, env: [String: String]? = nil
  ) {
    self.command = command
    self.port = port
    self.workdir = workdir
    self.env = env
  }
}

public struct LogChunk: Codable, Sendable, Equatable {
  public var content: String
  public var nextOffset: Int64
  public init(content: String, nextOffset: Int64) {
    self.content = content
    self.nextOffset = nextOffset
  }
}
