/// Every HTTP and WebSocket route of the guest agent, in one table: the agent registers its
/// router from it (a route cannot exist on the agent without an entry here), the manager
/// proxies the entries marked `proxied` under `/api/sandboxes/{id}`, and the API document
/// lists them. Schemas are not here: they come from the Codable types named.

/// The Codable wire types the table names.
public typealias AgentWireType = Codable & Sendable

public enum AgentHTTPMethod: String, Sendable, CaseIterable {
  case get = "GET", put = "PUT", post = "POST", delete = "DELETE", patch = "PATCH"
}

/// A request or response body.
public enum AgentBody: Sendable {
  /// JSON of this type (arrays are `[Element].self`).
  case json(any AgentWireType.Type)
  /// Raw bytes, streamed both ways, never buffered whole.
  case raw(contentType: String)

  /// The Codable type of a JSON body; nil for raw bytes.
  public var type: (any AgentWireType.Type)? {
    if case .json(let type) = self { return type }
    return nil
  }
  public var isRaw: Bool {
    if case .raw = self { return true }
    return false
  }
}

/// A path or query parameter.
public struct AgentParameter: Sendable, Equatable {
  /// What a value must look like (the agent's checks; the API document states the same).
  public enum Format: Sendable, Equatable {
    case text
    /// Matching a regular expression (`GuestFormats`).
    case pattern(String)
    case boolean
    /// A whole number at least this.
    case integer(minimum: Int)
  }
  public var name: String
  public var description: String
  public var required: Bool
  public var format: Format
  public init(
    _ name: String, _ description: String, required: Bool = false, format: Format = .text
  ) {
    self.name = name
    self.description = description
    self.required = required
    self.format = format
  }
}

public struct AgentOperation: Sendable {
  /// One name per operation: the agent's handlers are a `switch` over these, so the compiler
  /// sees to it that every entry has one.
  public enum ID: String, Sendable, CaseIterable {
    case health, systemResume, systemPowerOff, systemGuestServices, guestServiceTunnel
    case systemEnvironment
    case exec, execBatch, execStream
    case processStart, processList, processEvents, processInput, processCloseStdin
    case processSignal, processResize
    case filesDownload, filesUpload, filesDelete, filesList, filesStat, filesMkdir, filesWrite
    case filesMove, filesWatch
    case archiveDownload, archiveUpload
    case servicesList, serviceGet, serviceDefine, serviceDelete, serviceStart, serviceStop
    case serviceRestart, serviceLogs
    case devList, devGet, devStart, devStop, devLogs
    case gitStatus, gitDiff, gitCommit, gitPush
    case metrics
    case terminalsList, terminalCreate, terminalGet, terminalDelete, terminalAttach
  }

  public var id: ID
  public var method: AgentHTTPMethod
  /// Path template with `{name}` parameters, as Hummingbird and OpenAPI write them.
  public var path: String
  public var summary: String
  public var tag: String
  public var request: AgentBody?
  public var response: AgentBody?
  /// The status of success (101 for WebSockets).
  public var status: Int
  public var query: [AgentParameter]
  /// Every error the agent may answer with (`ErrorBody`, with the code's HTTP status).
  public var errors: [AtelierError.Code]
  /// A GET that upgrades to a WebSocket; `summary` says what flows on it.
  public var isWebSocket: Bool
  /// Served to API users by the manager under `/api/sandboxes/{id}`. The others (`/system/*`,
  /// the tunnel) are the manager's own.
  public var proxied: Bool
  /// Needs `Authorization: Bearer <agent key>` (all but `GET /health`, which without the key
  /// answers only `{"status":"ok"}`).
  public var requiresKey: Bool

  public init(
    _ id: ID, _ method: AgentHTTPMethod, _ path: String, summary: String, tag: String,
    request: AgentBody? = nil, response: AgentBody? = nil, status: Int = 200,
    query: [AgentParameter] = [], errors: [AtelierError.Code] = [], isWebSocket: Bool = false,
    proxied: Bool = true, requiresKey: Bool = true
  ) {
    self.id = id
    self.method = method
    self.path = path
    self.summary = summary
    self.tag = tag
    self.request = request
    self.response = response
    self.status = status
    self.query = query
    // Anything may fail unexpectedly; anything that needs the key may be refused.
    let implied: [AtelierError.Code] = (requiresKey ? [.unauthorized] : []) + [.internal]
    self.errors = AtelierError.Code.allCases.filter { (errors + implied).contains($0) }
    self.isWebSocket = isWebSocket
    self.proxied = proxied
    self.requiresKey = requiresKey
  }

  /// The `{…}` parameters of `path`, described.
  public var pathParameters: [AgentParameter] {
    path.split(separator: "/").compactMap { part -> AgentParameter? in
      guard part.hasPrefix("{"), part.hasSuffix("}") else { return nil }
      let name = String(part.dropFirst().dropLast())
      let description =
        switch (name, tag) {
        case ("sid", _): "terminal session id"
        case ("pid", _): "process id"
        case ("name", "dev"): "dev command name"
        default: "service name"
        }
      return AgentParameter(name, description, required: true)
    }
  }

  /// `path` with its parameters filled in (values are used as given: path-safe names).
  public func concretePath(_ values: [String: String]) -> String {
    "/"
      + path.split(separator: "/").map { part in
        guard part.hasPrefix("{"), part.hasSuffix("}") else { return String(part) }
        return values[String(part.dropFirst().dropLast())] ?? String(part)
      }.joined(separator: "/")
  }
}

public enum AgentOperations {
  public static func operation(_ id: AgentOperation.ID) -> AgentOperation {
    all.first { $0.id == id }!
  }

  /// What the manager exposes to its users.
  public static var proxied: [AgentOperation] { all.filter(\.proxied) }

  static let path = AgentParameter(
    "path", "absolute path in the guest", required: true,
    format: .pattern(GuestFormats.pathPattern))
  static let logQuery = [
    AgentParameter("offset", "byte offset to read from (default 0)", format: .integer(minimum: 0)),
    AgentParameter("limit", "bytes to read (default 65536)", format: .integer(minimum: 1)),
  ]
  static let octet = AgentBody.raw(contentType: "application/octet-stream")
  static let tar = AgentBody.raw(contentType: "application/x-tar")
  /// A stream of JSON objects, one per line, written as they happen.
  public static let ndjson = AgentBody.raw(contentType: "application/x-ndjson")

  public static let all: [AgentOperation] =
    system + exec + processes + files + services + dev + git + terminals + [
      AgentOperation(
        .metrics, .get, "/metrics", summary: "CPU, memory, disk, load, uptime, processes",
        tag: "sandboxes", response: .json(GuestMetrics.self))
    ]

  static let system: [AgentOperation] = [
    AgentOperation(
      .health, .get, "/health",
      summary: "Whether the agent is up; with the key also who it is (sandbox id, hostname)",
      tag: "system", response: .json(AgentHealth.self), proxied: false, requiresKey: false),
    AgentOperation(
      .systemResume, .post, "/system/resume",
      summary:
        "After a restore or resume: the time, entropy, a new identity and network, a new key",
      tag: "system", request: .json(GuestResumeRequest.self), response: .json(AgentHealth.self),
      errors: [.validation], proxied: false),
    AgentOperation(
      .systemPowerOff, .post, "/system/poweroff", summary: "Sync and power the VM off",
      tag: "system", status: 202, proxied: false),
    AgentOperation(
      .systemGuestServices, .put, "/system/guest-services",
      summary: "The guest ports to serve as host.atelier.internal (through tunnels)",
      tag: "system", request: .json(GuestServicesRequest.self),
      response: .json(GuestServicesStatus.self), errors: [.validation], proxied: false),
    AgentOperation(
      .guestServiceTunnel, .get, "/guest-services/tunnel",
      summary:
        "An idle tunnel (WebSocket) the manager keeps open: the agent sends {\"type\":\"open\","
        + "\"port\"} when a guest process connects to a guest service, then bytes flow as "
        + "binary frames both ways, {\"type\":\"eof\"} ending each direction",
      tag: "system", status: 101, isWebSocket: true, proxied: false),
    AgentOperation(
      .systemEnvironment, .put, "/system/environment",
      summary:
        "The sandbox-wide environment every command, terminal, service and process gets "
        + "from now on (replacing the previous one)",
      tag: "system", request: .json(GuestEnvironmentRequest.self),
      response: .json(GuestEnvironmentStatus.self), errors: [.validation], proxied: false),
  ]

  /// The process table (the manager's own: the E2B adapter serves it to E2B clients).
  static let processes: [AgentOperation] = [
    AgentOperation(
      .processStart, .post, "/processes",
      summary:
        "Start a process and stream its events (start, stdout/stderr/pty, end; one JSON "
        + "object per line); the process outlives the stream",
      tag: "processes", request: .json(ProcessStartRequest.self), response: ndjson,
      errors: [.validation, .notFound], proxied: false),
    AgentOperation(
      .processList, .get, "/processes", summary: "Processes in the table", tag: "processes",
      response: .json([GuestProcess].self), proxied: false),
    AgentOperation(
      .processEvents, .get, "/processes/{pid}/events",
      summary: "Attach to a running process: start, then its output from now on, then end",
      tag: "processes", response: ndjson, errors: [.notFound], proxied: false),
    AgentOperation(
      .processInput, .post, "/processes/{pid}/input",
      summary: "Write to a process's stdin (or its terminal)", tag: "processes",
      request: .json(ProcessInputRequest.self), status: 204,
      errors: [.validation, .notFound, .conflict], proxied: false),
    AgentOperation(
      .processCloseStdin, .post, "/processes/{pid}/close-stdin",
      summary: "Close a process's stdin (end of file)", tag: "processes", status: 204,
      errors: [.notFound, .conflict], proxied: false),
    AgentOperation(
      .processSignal, .post, "/processes/{pid}/signal",
      summary: "Signal a process's group", tag: "processes",
      request: .json(ProcessSignalRequest.self), status: 204,
      errors: [.validation, .notFound], proxied: false),
    AgentOperation(
      .processResize, .post, "/processes/{pid}/resize",
      summary: "Resize a process's terminal", tag: "processes",
      request: .json(TerminalSize.self), status: 204,
      errors: [.validation, .notFound, .conflict], proxied: false),
  ]

  static let exec: [AgentOperation] = [
    AgentOperation(
      .exec, .post, "/exec", summary: "Run a command and wait for it", tag: "exec",
      request: .json(ExecRequest.self), response: .json(ExecResult.self),
      errors: [.validation, .notFound]),
    AgentOperation(
      .execBatch, .post, "/exec/batch",
      summary: "Run commands in order (stops at the first failure by default)", tag: "exec",
      request: .json(ExecBatchRequest.self), response: .json(ExecBatchResult.self),
      errors: [.validation, .notFound]),
    AgentOperation(
      .execStream, .get, "/exec/stream",
      summary:
        "Streaming exec (WebSocket): send an ExecRequest, then stdin/closeStdin/signal frames; "
        + "receive started, stdout, stderr, exit",
      tag: "exec", status: 101, isWebSocket: true),
  ]

  static let files: [AgentOperation] = [
    AgentOperation(
      .filesDownload, .get, "/files", summary: "Download a file (raw bytes, streamed)",
      tag: "files", response: octet, query: [path],
      errors: [.validation, .forbidden, .notFound, .conflict]),
    AgentOperation(
      .filesUpload, .put, "/files",
      summary: "Upload a file (raw body, streamed; parents created; never through a symlink)",
      tag: "files", request: octet, response: .json(FileEntry.self), status: 201,
      query: [
        path,
        AgentParameter(
          "mode", "octal permissions, e.g. 0644", format: .pattern(GuestFormats.modePattern)),
        AgentParameter(
          "owner", "user or user:group", format: .pattern(GuestFormats.ownerPattern)),
      ], errors: [.validation, .forbidden, .notFound, .conflict, .resourceExhausted]),
    AgentOperation(
      .filesDelete, .delete, "/files", summary: "Delete a file or folder", tag: "files",
      status: 204,
      query: [
        path,
        AgentParameter("recursive", "true to delete a non-empty folder", format: .boolean),
      ],
      errors: [.validation, .forbidden, .notFound, .conflict]),
    AgentOperation(
      .filesList, .get, "/files/list",
      summary: "List a folder (and, with depth, what is below it; symlinks are not followed)",
      tag: "files", response: .json(FileListing.self),
      query: [
        path,
        AgentParameter(
          "depth", "levels to list (default 1, at most 64)", format: .integer(minimum: 1)),
      ],
      errors: [.validation, .forbidden, .notFound]),
    AgentOperation(
      .filesStat, .get, "/files/stat", summary: "Describe a file", tag: "files",
      response: .json(FileEntry.self), query: [path], errors: [.validation, .forbidden, .notFound]),
    AgentOperation(
      .filesMkdir, .post, "/files/mkdir", summary: "Create a folder and its parents",
      tag: "files", request: .json(MkdirRequest.self), response: .json(FileEntry.self),
      status: 201, errors: [.validation, .forbidden, .notFound, .conflict, .resourceExhausted]),
    AgentOperation(
      .filesWrite, .post, "/files/write", summary: "Write several small files (text or base64)",
      tag: "files", request: .json(WriteFilesRequest.self),
      response: .json(WriteFilesResult.self),
      errors: [.validation, .forbidden, .notFound, .conflict, .resourceExhausted]),
    AgentOperation(
      .filesMove, .post, "/files/move",
      summary: "Move or rename a file or folder (the destination's parents are created)",
      tag: "files", request: .json(MoveRequest.self), response: .json(FileEntry.self),
      errors: [.validation, .forbidden, .notFound, .conflict], proxied: false),
    AgentOperation(
      .filesWatch, .get, "/files/watch",
      summary:
        "Watch a folder: started, then one event per change (one JSON object per line) "
        + "until the client goes",
      tag: "files", response: ndjson,
      query: [
        path,
        AgentParameter("recursive", "watch the folders below it too", format: .boolean),
        AgentParameter("includeEntry", "describe each changed entry", format: .boolean),
      ],
      errors: [.validation, .forbidden, .notFound], proxied: false),
    AgentOperation(
      .archiveDownload, .get, "/files/archive", summary: "Download a folder as a tar stream",
      tag: "files", response: tar, query: [path], errors: [.validation, .forbidden, .notFound]),
    AgentOperation(
      .archiveUpload, .put, "/files/archive",
      summary:
        "Extract a tar stream into a folder (no devices, FIFOs, .. or absolute members; "
        + "never through a symlink)",
      tag: "files", request: tar, response: .json(FileEntry.self), status: 201,
      query: [
        path,
        AgentParameter(
          "owner", "user or user:group for the extracted files",
          format: .pattern(GuestFormats.ownerPattern)),
      ],
      errors: [.validation, .forbidden, .notFound, .conflict, .resourceExhausted]),
  ]

  static let services: [AgentOperation] = [
    AgentOperation(
      .servicesList, .get, "/services", summary: "List services", tag: "services",
      response: .json([ServiceStatus].self)),
    AgentOperation(
      .serviceGet, .get, "/services/{name}", summary: "Get a service", tag: "services",
      response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .serviceDefine, .put, "/services/{name}", summary: "Define (or redefine) a service",
      tag: "services", request: .json(ServiceDefinition.self),
      response: .json(ServiceStatus.self), errors: [.validation, .conflict, .notFound]),
    AgentOperation(
      .serviceDelete, .delete, "/services/{name}", summary: "Stop and forget a service",
      tag: "services", status: 204, errors: [.validation, .notFound]),
    AgentOperation(
      .serviceStart, .post, "/services/{name}/start", summary: "Start a service",
      tag: "services", response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .serviceStop, .post, "/services/{name}/stop", summary: "Stop a service (TERM, then KILL)",
      tag: "services", response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .serviceRestart, .post, "/services/{name}/restart", summary: "Restart a service",
      tag: "services", response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .serviceLogs, .get, "/services/{name}/logs", summary: "Read a service's output",
      tag: "services", response: .json(LogChunk.self), query: logQuery,
      errors: [.validation, .notFound]),
  ]

  static let dev: [AgentOperation] = [
    AgentOperation(
      .devList, .get, "/dev", summary: "List dev commands", tag: "dev",
      response: .json([ServiceStatus].self)),
    AgentOperation(
      .devGet, .get, "/dev/{name}", summary: "Get a dev command", tag: "dev",
      response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .devStart, .post, "/dev/{name}/start", summary: "Start (or restart) a dev command",
      tag: "dev", request: .json(DevCommandRequest.self), response: .json(ServiceStatus.self),
      errors: [.validation, .conflict, .notFound]),
    AgentOperation(
      .devStop, .post, "/dev/{name}/stop", summary: "Stop a dev command", tag: "dev",
      response: .json(ServiceStatus.self), errors: [.validation, .notFound]),
    AgentOperation(
      .devLogs, .get, "/dev/{name}/logs", summary: "Read a dev command's output", tag: "dev",
      response: .json(LogChunk.self), query: logQuery, errors: [.validation, .notFound]),
  ]

  static let git: [AgentOperation] = [
    AgentOperation(
      .gitStatus, .get, "/git/status", summary: "Status of the workspace's git repositories",
      tag: "git", response: .json(GitStatusResponse.self),
      query: [
        AgentParameter(
          "repoPath", "one repository (default: all under /home/dev/workspace)",
          format: .pattern(GuestFormats.pathPattern))
      ],
      errors: [.validation, .notFound]),
    AgentOperation(
      .gitDiff, .get, "/git/diff", summary: "Changed files with added and removed lines",
      tag: "git", response: .json(GitDiffResponse.self),
      query: [
        AgentParameter(
          "repoPath", "one repository (default: all)", format: .pattern(GuestFormats.pathPattern))
      ],
      errors: [.validation, .notFound]),
    AgentOperation(
      .gitCommit, .post, "/git/commit", summary: "Commit every change in a repository",
      tag: "git", request: .json(GitRepoRequest.self), response: .json(GitCommandResult.self),
      errors: [.validation, .notFound, .conflict]),
    AgentOperation(
      .gitPush, .post, "/git/push", summary: "Push a repository to its upstream", tag: "git",
      request: .json(GitRepoRequest.self), response: .json(GitCommandResult.self),
      errors: [.validation, .notFound]),
  ]

  static let terminals: [AgentOperation] = [
    AgentOperation(
      .terminalsList, .get, "/terminal/sessions", summary: "List terminal sessions",
      tag: "terminals", response: .json([TerminalSession].self)),
    AgentOperation(
      .terminalCreate, .post, "/terminal/sessions",
      summary: "Start a terminal session (a shell on a PTY)", tag: "terminals",
      request: .json(TerminalCreateRequest.self), response: .json(TerminalSession.self),
      status: 201, errors: [.validation, .notFound]),
    AgentOperation(
      .terminalGet, .get, "/terminal/sessions/{sid}", summary: "Get a terminal session",
      tag: "terminals", response: .json(TerminalSession.self), errors: [.notFound]),
    AgentOperation(
      .terminalDelete, .delete, "/terminal/sessions/{sid}", summary: "End a terminal session",
      tag: "terminals", status: 204, errors: [.notFound]),
    AgentOperation(
      .terminalAttach, .get, "/terminal/sessions/{sid}/ws",
      summary:
        "Attach to a terminal (WebSocket): replay, then output as binary frames; input as "
        + "binary frames, resize as {\"type\":\"resize\",\"cols\",\"rows\"}; a client that "
        + "takes nothing for 10 s is disconnected (close code 4008) and may attach again",
      tag: "terminals", status: 101, isWebSocket: true),
  ]
}
