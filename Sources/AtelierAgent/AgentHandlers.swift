import AtelierAgentAPI
import AtelierHTTP
import Hummingbird

#if canImport(Glibc)
  import Glibc
#endif

/// The handlers of `AgentRoutes` that are more than one call.
extension AgentRoutes {
  func health() -> AgentHealth {
    let uptime = ContinuousClock.now - identity.startedAt
    return AgentHealth(
      status: "ok", sandboxId: identity.sandboxId, hostname: identity.hostname,
      uptime: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18)
  }

  /// The clock, entropy and (after a restore) identity and network; then the new key, which
  /// this request (made with the old one) is the last to need.
  func resume(_ request: Request) async throws -> AgentReply {
    let body = try await request.decodeJSON(GuestResumeRequest.self)
    if let key = body.agentKey, !AgentKey.isValid(key) {
      throw APIError.badRequest("agentKey must be 64 lowercase hex digits")
    }
    let restored = body.sandboxId != nil && body.sandboxId != identity.sandboxId
    GuestInit.resume(body, identity: identity, logger: logger)
    if restored { guestServices.dropAllTunnels() }
    if let key = body.agentKey {
      keys.replace(with: key)
      logger.info("agent key replaced")
    }
    return .json(health())
  }

  func powerOff() -> AgentReply {
    // Answer first, then power off: the caller waits for the VMM process to exit.
    Task {
      try? await Task.sleep(for: .milliseconds(100))
      if getpid() == 1 { GuestInit.powerOff() }
    }
    return .empty
  }

  func upload(_ request: Request) async throws -> FileEntry {
    try await FileService.upload(
      path: request.query("path"), mode: request.query("mode"), owner: request.query("owner"),
      body: request.body)
  }

  func status(_ context: AgentContext, _ kind: ServiceSupervisor.Kind) async throws
    -> ServiceStatus
  {
    try await supervisor.status(of: try context.parameters.require("name"), kind: kind)
  }

  func define(_ request: Request, _ context: AgentContext) async throws -> ServiceStatus {
    let name = try context.parameters.require("name")
    try await supervisor.define(
      name, kind: .service, definition: try await request.decodeJSON(ServiceDefinition.self))
    return try await supervisor.status(of: name, kind: .service)
  }

  enum Control { case start, stop, restart }

  func control(
    _ context: AgentContext, _ action: Control, kind: ServiceSupervisor.Kind = .service
  ) async throws -> ServiceStatus {
    let name = try context.parameters.require("name")
    _ = try await supervisor.status(of: name, kind: kind)
    switch action {
    case .start: try await supervisor.start(name)
    case .stop: try await supervisor.stop(name)
    case .restart: try await supervisor.restart(name)
    }
    return try await supervisor.status(of: name, kind: kind)
  }

  func logs(_ request: Request, _ context: AgentContext, _ kind: ServiceSupervisor.Kind)
    async throws -> LogChunk
  {
    guard let offset = Int64(request.query("offset") ?? "0"),
      let limit = Int(request.query("limit") ?? "65536"), offset >= 0, limit > 0
    else {
      throw APIError.badRequest("offset must be a number ≥ 0 and limit a number ≥ 1")
    }
    return try await supervisor.logs(
      try context.parameters.require("name"), kind: kind, offset: offset, limit: limit)
  }

  func startDev(_ request: Request, _ context: AgentContext) async throws -> ServiceStatus {
    let name = try context.parameters.require("name")
    let body = try await request.decodeJSON(DevCommandRequest.self)
    if let port = body.port, !(1...65535).contains(port) {
      throw APIError.badRequest("port must be 1–65535")
    }
    let workdir =
      body.workdir ?? (directoryExists(GitService.workspace) ? GitService.workspace : nil)
    try await supervisor.define(
      name, kind: .dev,
      definition: ServiceDefinition(
        command: body.command, cwd: workdir, env: body.env, port: body.port))
    try await supervisor.stop(name)
    try await supervisor.start(name)
    return try await supervisor.status(of: name, kind: .dev)
  }
}
