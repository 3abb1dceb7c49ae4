import AtelierCore
import Hummingbird

/// The agent's routes as the manager exposes them under `/api/sandboxes/{id}`: same paths,
/// same bodies, proxied to the sandbox's agent.
extension ManagerAPI {
  /// (method, agent path, summary, tag, request schema, response schema, query parameters)
  struct AgentOperation {
    var method: HTTPRequest.Method
    var path: String
    var summary: String
    var tag: String
    var request: JSONValue?
    var response: JSONValue?
    var status: Int = 200
    var query: [(String, String)] = []
    var rawRequest = false
    var rawResponse = false
  }

  static var agentOperations: [AgentOperation] {
    let ref = Schemas.ref
    let string: JSONValue = ["type": "string"]
    let statusList: JSONValue = ["type": "array", "items": ref("ServiceStatus")]
    let pathQuery = [("path", "absolute path in the guest")]
    let logQuery = [
      ("offset", "byte offset to read from (default 0)"),
      ("limit", "bytes to read (default 65536)"),
    ]
    return [
      AgentOperation(
        method: .post, path: "/exec/batch",
        summary: "Run commands in order (stops at the first failure by default)",
        tag: "exec", request: ref("ExecBatchRequest"), response: ref("ExecBatchResult")),
      AgentOperation(
        method: .get, path: "/files", summary: "Download a file (raw bytes, streamed)",
        tag: "files",
        response: ["type": "string", "format": "binary"], query: pathQuery, rawResponse: true),
      AgentOperation(
        method: .put, path: "/files",
        summary: "Upload a file (raw body, streamed; parents created)",
        tag: "files", request: ["type": "string", "format": "binary"], response: ref("FileEntry"),
        status: 201,
        query: pathQuery + [
          ("mode", "octal permissions, e.g. 0644"), ("owner", "user or user:group"),
        ],
        rawRequest: true),
      AgentOperation(
        method: .delete, path: "/files", summary: "Delete a file or folder", tag: "files",
        status: 204,
        query: pathQuery + [("recursive", "true to delete a non-empty folder")]),
      AgentOperation(
        method: .get, path: "/files/list", summary: "List a folder", tag: "files",
        response: ref("FileListing"),
        query: pathQuery),
      AgentOperation(
        method: .get, path: "/files/stat", summary: "Describe a file", tag: "files",
        response: ref("FileEntry"),
        query: pathQuery),
      AgentOperation(
        method: .post, path: "/files/mkdir", summary: "Create a folder and its parents",
        tag: "files",
        request: ref("MkdirRequest"), response: ref("FileEntry"), status: 201),
      AgentOperation(
        method: .post, path: "/files/write", summary: "Write several small files (text or base64)",
        tag: "files",
        request: ref("WriteFilesRequest"),
        response: [
          "type": "object",
          "properties": ["written": ["type": "array", "items": ref("FileEntry")]],
        ]),
      AgentOperation(
        method: .get, path: "/files/archive", summary: "Download a folder as a tar stream",
        tag: "files",
        response: ["type": "string", "format": "binary"], query: pathQuery, rawResponse: true),
      AgentOperation(
        method: .put, path: "/files/archive", summary: "Extract a tar stream into a folder",
        tag: "files",
        request: ["type": "string", "format": "binary"], response: ref("FileEntry"), status: 201,
        query: pathQuery + [("owner", "user or user:group for the extracted files")],
        rawRequest: true),
      AgentOperation(
        method: .get, path: "/services", summary: "List services", tag: "services",
        response: statusList),
      AgentOperation(
        method: .get, path: "/services/{name}", summary: "Get a service", tag: "services",
        response: ref("ServiceStatus")),
      AgentOperation(
        method: .put, path: "/services/{name}", summary: "Define (or redefine) a service",
        tag: "services",
        request: ref("ServiceDefinition"), response: ref("ServiceStatus")),
      AgentOperation(
        method: .delete, path: "/services/{name}", summary: "Stop and forget a service",
        tag: "services", status: 204),
      AgentOperation(
        method: .post, path: "/services/{name}/start", summary: "Start a service", tag: "services",
        response: ref("ServiceStatus")),
      AgentOperation(
        method: .post, path: "/services/{name}/stop", summary: "Stop a service (TERM, then KILL)",
        tag: "services",
        response: ref("ServiceStatus")),
      AgentOperation(
        method: .post, path: "/services/{name}/restart", summary: "Restart a service",
        tag: "services",
        response: ref("ServiceStatus")),
      AgentOperation(
        method: .get, path: "/services/{name}/logs", summary: "Read a service's output",
        tag: "services",
        response: ref("LogChunk"), query: logQuery),
      AgentOperation(
        method: .get, path: "/dev", summary: "List dev commands", tag: "dev", response: statusList),
      AgentOperation(
        method: .post, path: "/dev/{name}/start", summary: "Start (or restart) a dev command",
        tag: "dev",
        request: ref("DevCommandRequest"), response: ref("ServiceStatus")),
      AgentOperation(
        method: .post, path: "/dev/{name}/stop", summary: "Stop a dev command", tag: "dev",
        response: ref("ServiceStatus")),
      AgentOperation(
        method: .get, path: "/dev/{name}/logs", summary: "Read a dev command's output", tag: "dev",
        response: ref("LogChunk"), query: logQuery),
      AgentOperation(
        method: .get, path: "/git/status", summary: "Status of the workspace's git repositories",
        tag: "git",
        response: ref("GitStatus"),
        query: [("repoPath", "one repository (default: all under /home/dev/workspace)")]),
      AgentOperation(
        method: .get, path: "/git/diff", summary: "Changed files with added and removed lines",
        tag: "git",
        response: ref("GitDiff"), query: [("repoPath", "one repository (default: all)")]),
      AgentOperation(
        method: .post, path: "/git/commit", summary: "Commit every change in a repository",
        tag: "git",
        request: ref("GitRepoRequest"), response: ref("GitCommandResult")),
      AgentOperation(
        method: .post, path: "/git/push", summary: "Push a repository to its upstream", tag: "git",
        request: ref("GitRepoRequest"), response: ref("GitCommandResult")),
      AgentOperation(
        method: .get, path: "/metrics", summary: "CPU, memory, disk, load, uptime, processes",
        tag: "sandboxes",
        response: ref("Metrics")),
      AgentOperation(
        method: .get, path: "/terminal/sessions", summary: "List terminal sessions",
        tag: "terminals",
        response: ["type": "array", "items": ref("TerminalSession")]),
      AgentOperation(
        method: .post, path: "/terminal/sessions",
        summary: "Start a terminal session (a shell on a PTY)",
        tag: "terminals", request: ref("TerminalCreateRequest"), response: ref("TerminalSession"),
        status: 201),
      AgentOperation(
        method: .get, path: "/terminal/sessions/{sid}", summary: "Get a terminal session",
        tag: "terminals",
        response: ref("TerminalSession")),
      AgentOperation(
        method: .delete, path: "/terminal/sessions/{sid}", summary: "End a terminal session",
        tag: "terminals",
        status: 204),
    ].map { operation in
      var operation = operation
      if operation.response == nil && operation.status == 200 { operation.response = string }
      return operation
    }
  }

  /// WebSocket endpoints (GET with an upgrade): the agent path and what it carries.
  static let agentWebSockets: [(path: String, summary: String, tag: String)] = [
    (
      "/exec/stream",
      "Streaming exec (WebSocket): send an ExecRequest, then stdin/closeStdin/signal frames; receive started, stdout, stderr, exit",
      "exec"
    ),
    (
      "/terminal/sessions/{sid}/ws",
      "Attach to a terminal (WebSocket): replay, then output as binary frames; input as binary frames, resize as {\"type\":\"resize\",\"cols\",\"rows\"}",
      "terminals"
    ),
  ]

  func agentRoutes(proxy: AgentProxy) -> [APIRoute] {
    let error = Schemas.ref("Error")
    var routes: [APIRoute] = []
    for operation in Self.agentOperations {
      var parameters = [APIRoute.pathParameter("id", "sandbox id")]
      for name in ["name", "sid"] where operation.path.contains("{\(name)}") {
        parameters.append(
          APIRoute.pathParameter(name, name == "sid" ? "terminal session id" : "service name"))
      }
      parameters += operation.query.map { APIRoute.queryParameter($0.0, $0.1) }
      var responses: [Int: (String, JSONValue?)] = [
        404: ("unknown sandbox, or nothing at that path", error),
        409: ("the sandbox is not running", error), 503: ("the agent is unreachable", error),
        400: ("invalid request", error),
      ]
      responses[operation.status] = (
        operation.status == 204 ? "done" : "result", operation.response
      )
      let agentPath = operation.path
      routes.append(
        APIRoute(
          operation.method, "/api/sandboxes/{id}\(operation.path)", summary: operation.summary,
          tag: operation.tag,
          parameters: parameters, requestBody: operation.request,
          rawRequestBody: operation.rawRequest,
          rawResponseBody: operation.rawResponse, responses: responses
        ) { request, context in
          var path = agentPath
          for name in ["name", "sid"] where path.contains("{\(name)}") {
            path = path.replacingOccurrences(
              of: "{\(name)}", with: try context.parameters.require(name))
          }
          return try await proxy.forward(
            request, sandboxId: try context.parameters.require("id"), agentPath: path)
        })
    }
    for socket in Self.agentWebSockets {
      var parameters = [
        APIRoute.pathParameter("id", "sandbox id"),
        APIRoute.queryParameter(
          "token", "API token (for clients that cannot send an Authorization header)"),
      ]
      if socket.path.contains("{sid}") {
        parameters.append(APIRoute.pathParameter("sid", "terminal session id"))
      }
      routes.append(
        APIRoute(
          .get, "/api/sandboxes/{id}\(socket.path)", summary: socket.summary, tag: socket.tag,
          parameters: parameters,
          responses: [
            101: ("switching to the WebSocket protocol", nil),
            400: ("not a WebSocket upgrade request", error),
            404: ("unknown sandbox", error), 409: ("the sandbox is not running", error),
          ]
        ) { _, _ in
          throw AtelierError.validation(
            "this endpoint needs a WebSocket upgrade (Connection: Upgrade)")
        })
    }
    return routes
  }
}
