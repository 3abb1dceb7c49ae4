import AtelierAgentAPI

extension AgentProxyController {
  static let pathQuery = [
    QueryParameter(
      name: "path", description: "absolute path in the guest",
      schema: ["type": "string", "pattern": .string(GuestFormats.pathPattern)], required: true)
  ]
  static let logQuery = [
    QueryParameter(
      name: "offset", description: "byte offset to read from (default 0)",
      schema: ["type": "integer", "minimum": 0]),
    QueryParameter(
      name: "limit", description: "bytes to read (default 65536)",
      schema: ["type": "integer", "minimum": 1]),
  ]

  /// Every agent operation users reach through the manager.
  static let operations: [ProxiedOperation] = execAndFiles + servicesAndDev + gitAndTerminals

  static let execAndFiles: [ProxiedOperation] = [
    ProxiedOperation(
      method: .post, path: "/exec/batch",
      summary: "Run commands in order (stops at the first failure by default)", tag: "exec",
      body: .json(ExecBatchRequest.self), response: .json(ExecBatchResult.self, "the results")),
    ProxiedOperation(
      method: .get, path: "/exec/stream",
      summary:
        "Streaming exec (WebSocket): send an ExecRequest, then stdin/closeStdin/signal frames; "
        + "receive started, stdout, stderr, exit", tag: "exec", response: .webSocketUpgrade,
      webSocket: true),
    ProxiedOperation(
      method: .get, path: "/files", summary: "Download a file (raw bytes, streamed)",
      tag: "files", response: .binary("the file's bytes"), query: pathQuery),
    ProxiedOperation(
      method: .put, path: "/files", summary: "Upload a file (raw body, streamed; parents created)",
      tag: "files", body: .binary("the file's bytes"), response: .json(FileEntry.self, "written"),
      status: 201,
      query: pathQuery + [
        QueryParameter(
          name: "mode", description: "octal permissions, e.g. 0644",
          schema: ["type": "string", "pattern": .string(GuestFormats.modePattern)]),
        QueryParameter(
          name: "owner", description: "user or user:group",
          schema: ["type": "string", "pattern": .string(GuestFormats.ownerPattern)]),
      ]),
    ProxiedOperation(
      method: .delete, path: "/files", summary: "Delete a file or folder", tag: "files",
      response: .empty("deleted"), status: 204,
      query: pathQuery + [
        QueryParameter(
          name: "recursive", description: "true to delete a non-empty folder",
          schema: ["type": "boolean"])
      ]),
    ProxiedOperation(
      method: .get, path: "/files/list", summary: "List a folder", tag: "files",
      response: .json(FileListing.self, "the folder's entries"), query: pathQuery),
    ProxiedOperation(
      method: .get, path: "/files/stat", summary: "Describe a file", tag: "files",
      response: .json(FileEntry.self, "the file"), query: pathQuery),
    ProxiedOperation(
      method: .post, path: "/files/mkdir", summary: "Create a folder and its parents",
      tag: "files", body: .json(MkdirRequest.self), response: .json(FileEntry.self, "created"),
      status: 201),
    ProxiedOperation(
      method: .post, path: "/files/write", summary: "Write several small files (text or base64)",
      tag: "files", body: .json(WriteFilesRequest.self),
      response: .json(WriteFilesResult.self, "written")),
    ProxiedOperation(
      method: .get, path: "/files/archive", summary: "Download a folder as a tar stream",
      tag: "files", response: .binary("a tar stream"), query: pathQuery),
    ProxiedOperation(
      method: .put, path: "/files/archive", summary: "Extract a tar stream into a folder",
      tag: "files", body: .binary("a tar stream"), response: .json(FileEntry.self, "extracted"),
      status: 201,
      query: pathQuery + [
        QueryParameter(
          name: "owner", description: "user or user:group for the extracted files",
          schema: ["type": "string", "pattern": .string(GuestFormats.ownerPattern)])
      ]),
  ]

  static let servicesAndDev: [ProxiedOperation] = [
    ProxiedOperation(
      method: .get, path: "/services", summary: "List services", tag: "services",
      response: .json([ServiceStatus].self, "the services")),
    ProxiedOperation(
      method: .get, path: "/services/{name}", summary: "Get a service", tag: "services",
      response: .json(ServiceStatus.self, "the service")),
    ProxiedOperation(
      method: .put, path: "/services/{name}", summary: "Define (or redefine) a service",
      tag: "services", body: .json(ServiceDefinition.self),
      response: .json(ServiceStatus.self, "the service"),
      produces: ["name": "$request.path.name"]),
    ProxiedOperation(
      method: .delete, path: "/services/{name}", summary: "Stop and forget a service",
      tag: "services", response: .empty("removed"), status: 204),
    ProxiedOperation(
      method: .post, path: "/services/{name}/start", summary: "Start a service", tag: "services",
      response: .json(ServiceStatus.self, "the service")),
    ProxiedOperation(
      method: .post, path: "/services/{name}/stop", summary: "Stop a service (TERM, then KILL)",
      tag: "services", response: .json(ServiceStatus.self, "the service")),
    ProxiedOperation(
      method: .post, path: "/services/{name}/restart", summary: "Restart a service",
      tag: "services", response: .json(ServiceStatus.self, "the service")),
    ProxiedOperation(
      method: .get, path: "/services/{name}/logs", summary: "Read a service's output",
      tag: "services", response: .json(LogChunk.self, "output"), query: logQuery),
    ProxiedOperation(
      method: .get, path: "/dev", summary: "List dev commands", tag: "dev",
      response: .json([ServiceStatus].self, "the dev commands")),
    ProxiedOperation(
      method: .get, path: "/dev/{name}", summary: "Get a dev command", tag: "dev",
      response: .json(ServiceStatus.self, "the dev command")),
    ProxiedOperation(
      method: .post, path: "/dev/{name}/start", summary: "Start (or restart) a dev command",
      tag: "dev", body: .json(DevCommandRequest.self),
      response: .json(ServiceStatus.self, "the dev command"),
      produces: ["name": "$request.path.name"]),
    ProxiedOperation(
      method: .post, path: "/dev/{name}/stop", summary: "Stop a dev command", tag: "dev",
      response: .json(ServiceStatus.self, "the dev command")),
    ProxiedOperation(
      method: .get, path: "/dev/{name}/logs", summary: "Read a dev command's output", tag: "dev",
      response: .json(LogChunk.self, "output"), query: logQuery),
  ]

  static let gitAndTerminals: [ProxiedOperation] = [
    ProxiedOperation(
      method: .get, path: "/git/status", summary: "Status of the workspace's git repositories",
      tag: "git", response: .json(GitStatusResponse.self, "the repositories"),
      query: [
        QueryParameter(
          name: "repoPath", description: "one repository (default: all under /home/dev/workspace)",
          schema: ["type": "string", "pattern": .string(GuestFormats.pathPattern)])
      ]),
    ProxiedOperation(
      method: .get, path: "/git/diff", summary: "Changed files with added and removed lines",
      tag: "git", response: .json(GitDiffResponse.self, "the changes"),
      query: [
        QueryParameter(
          name: "repoPath", description: "one repository (default: all)",
          schema: ["type": "string", "pattern": .string(GuestFormats.pathPattern)])
      ]),
    ProxiedOperation(
      method: .post, path: "/git/commit", summary: "Commit every change in a repository",
      tag: "git", body: .json(GitRepoRequest.self),
      response: .json(GitCommandResult.self, "the commit")),
    ProxiedOperation(
      method: .post, path: "/git/push", summary: "Push a repository to its upstream", tag: "git",
      body: .json(GitRepoRequest.self), response: .json(GitCommandResult.self, "the push")),
    ProxiedOperation(
      method: .get, path: "/metrics", summary: "CPU, memory, disk, load, uptime, processes",
      tag: "sandboxes", response: .json(GuestMetrics.self, "the guest's metrics")),
    ProxiedOperation(
      method: .get, path: "/terminal/sessions", summary: "List terminal sessions",
      tag: "terminals", response: .json([TerminalSession].self, "the sessions")),
    ProxiedOperation(
      method: .post, path: "/terminal/sessions",
      summary: "Start a terminal session (a shell on a PTY)", tag: "terminals",
      body: .json(TerminalCreateRequest.self), response: .json(TerminalSession.self, "started"),
      status: 201, produces: ["sid": "$response.body#/id"]),
    ProxiedOperation(
      method: .get, path: "/terminal/sessions/{sid}", summary: "Get a terminal session",
      tag: "terminals", response: .json(TerminalSession.self, "the session")),
    ProxiedOperation(
      method: .delete, path: "/terminal/sessions/{sid}", summary: "End a terminal session",
      tag: "terminals", response: .empty("ended"), status: 204),
    ProxiedOperation(
      method: .get, path: "/terminal/sessions/{sid}/ws",
      summary:
        "Attach to a terminal (WebSocket): replay, then output as binary frames; input as binary "
        + "frames, resize as {\"type\":\"resize\",\"cols\",\"rows\"}", tag: "terminals",
      response: .webSocketUpgrade, webSocket: true),
  ]
}
