import AtelierCore
import AtelierHTTP
import AtelierHost
import AtelierManager
import AtelierStore
import Foundation
import HTTPTypes
import Hummingbird

/// E2B's control plane (`/sandboxes`, `/v2/sandboxes`, …) on Atelier's sandboxes: a create
/// is an Atelier create whose `timeout` is its lifetime, whose `envVars` its environment and
/// whose `templateID` an image or a snapshot.
struct ControlPlane<Context: RequestContext>: Sendable {
  let service: SandboxService
  let records: E2BRecords
  let views: SandboxViews

  func addRoutes(to group: RouterGroup<Context>) {
    group.post("sandboxes") { request, _ in try await create(request) }
    group.post("v2/sandboxes") { request, _ in try await create(request) }
    group.get("sandboxes") { request, _ in try await list(request, paged: false) }
    group.get("v2/sandboxes") { request, _ in try await list(request, paged: true) }
    group.get("sandboxes/:id") { _, context in
      try json(try await detail(try context.parameters.require("id")))
    }
    group.delete("sandboxes/:id") { _, context in
      try await service.delete(try context.parameters.require("id"))
      return Response(status: .noContent)
    }
    group.post("sandboxes/:id/timeout") { request, context in
      let body = try await request.decodeJSON(E2BTimeoutRequest.self)
      try Self.checkTimeout(body.timeout)
      try await service.setLifetime(try context.parameters.require("id"), seconds: body.timeout)
      return Response(status: .noContent)
    }
    group.post("sandboxes/:id/pause") { request, context in
      // The body (memory or not) is read to its end: keeping memory is all a pause does here.
      _ = try await request.body.collect(upTo: 1 << 16)
      _ = try await service.pause(try context.parameters.require("id"))
      return Response(status: .noContent)
    }
    for path in ["sandboxes/:id/connect", "v2/sandboxes/:id/connect", "sandboxes/:id/resume"] {
      group.post(RouterPath(path)) { request, context in
        try await connect(try context.parameters.require("id"), request)
      }
    }
    group.get("sandboxes/:id/metrics") { _, context in
      try json(try await metrics(try context.parameters.require("id")))
    }
  }

  func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    jsonResponse(value, status: status)
  }

  static func checkTimeout(_ timeout: Int) throws {
    let range = 1...CreateSandboxRequest.lifetimeRange.upperBound
    guard range.contains(timeout) else {
      throw AtelierError.validation("timeout must be between 1 and \(range.upperBound) seconds")
    }
  }

  // MARK: Create

  func create(_ request: Request) async throws -> Response {
    let body = try await request.decodeJSON(E2BNewSandbox.self)
    let templateId = body.templateID ?? "base"
    let timeout = body.timeout ?? E2BNewSandbox.defaultTimeout
    try Self.checkTimeout(timeout)
    let metadata = body.metadata ?? [:]
    if let problem = Self.metadataProblem(metadata) { throw AtelierError.validation(problem) }
    var create = CreateSandboxRequest(
      lifetimeSeconds: timeout, onExpiry: body.autoPause == true ? .pause : .delete,
      env: body.envVars ?? [:])
    switch try await Templates(service: service).resolve(templateId) {
    case .image(let name): create.image = name
    case .snapshot(let id): create.snapshot = id
    }
    let sandbox = try await service.create(create)
    let record = E2BSandboxRecord(
      sandboxId: sandbox.id, templateId: templateId, metadata: E2BRecords.encode(metadata),
      accessToken: E2BRecords.newToken(), autoPause: body.autoPause == true)
    do {
      try records.save(record)
    } catch {
      try? await service.delete(sandbox.id)
      throw AtelierError.internal(
        "cannot record the sandbox", cause: AtelierError.internal("\(error)"))
    }
    return try json(views.created(sandbox, record), status: .created)
  }

  static func metadataProblem(_ metadata: [String: String]) -> String? {
    if metadata.count > 100 { return "at most 100 metadata entries" }
    let bytes = metadata.reduce(0) { $0 + $1.key.utf8.count + $1.value.utf8.count }
    return bytes > 64 << 10 ? "metadata is larger than 64 KiB" : nil
  }

  // MARK: Read

  func detail(_ id: String) async throws -> E2BSandboxDetail {
    let sandbox = try await service.get(id)
    guard let detail = views.detail(sandbox, try records.ensure(sandbox)) else {
      throw AtelierError.notFound("sandbox \(id) not found")
    }
    return detail
  }

  /// Running and paused sandboxes (stopped ones count as paused: they come back on connect),
  /// filtered by state, metadata, template and start; `v2` pages with `X-Next-Token`.
  func list(_ request: Request, paged: Bool) async throws -> Response {
    let query = try ListQuery(request.uri.queryParameters, paged: paged)
    let sandboxes = try await service.list(status: nil)
    let stored = try records.all()
    var details: [E2BSandboxDetail] = []
    for sandbox in sandboxes {
      let record = try stored[sandbox.id] ?? records.ensure(sandbox)
      if let detail = views.detail(sandbox, record), query.matches(detail) {
        details.append(detail)
      }
    }
    let (page, next) = try query.page(details)
    var response = try json(page)
    if let next { response.headers[.nextToken] = next }
    return response
  }

  func metrics(_ id: String) async throws -> [E2BSandboxMetric] {
    let sandbox = try await service.get(id)
    guard sandbox.status == .running else { return [] }
    let agent = try await service.agentClient(id)
    let sample: GuestMetrics
    do {
      sample = try await agent.json(.GET, "/metrics", body: String?.none, as: GuestMetrics.self)
    } catch let error as AgentCallError {
      throw AtelierError(.unavailable, "cannot read the metrics of sandbox \(id)", cause: error)
    }
    let now = Date()
    return [
      E2BSandboxMetric(
        timestamp: SandboxViews.timestamp(now), timestampUnix: Int(now.timeIntervalSince1970),
        cpuCount: sample.cpu.count, cpuUsedPct: sample.cpu.usagePercent,
        memUsed: sample.memory.usedBytes, memTotal: sample.memory.totalBytes,
        // The agent does not sample the page cache apart.
        memCache: 0, diskUsed: sample.disk.usedBytes, diskTotal: sample.disk.totalBytes)
    ]
  }

  // MARK: Connect

  /// Resumes a paused sandbox (starts a stopped one), then answers it: 200 when it was
  /// already running, 201 when it had to come back.
  func connect(_ id: String, _ request: Request) async throws -> Response {
    let body = try await request.decodeJSON(E2BConnectRequest.self)
    if let timeout = body.timeout { try Self.checkTimeout(timeout) }
    var sandbox = try await service.get(id)
    let wasRunning = sandbox.status == .running
    switch sandbox.status {
    case .running:
      if let timeout = body.timeout {
        sandbox = try await service.setLifetime(id, seconds: timeout, onlyExtending: true)
      }
    case .paused, .stopped, .error:
      sandbox =
        sandbox.status == .paused ? try await service.resume(id) : try await service.start(id)
      sandbox = try await service.setLifetime(
        id, seconds: body.timeout ?? E2BNewSandbox.defaultTimeout)
    case .creating, .stopping:
      throw AtelierError.conflict("sandbox \(id) is \(sandbox.status.rawValue)")
    }
    let record = try records.ensure(sandbox)
    return try json(views.created(sandbox, record), status: wasRunning ? .ok : .created)
  }
}

/// Which Atelier thing a `templateID` names. A seam: workspaces (with their prebuilds) will
/// be a third case when they exist.
struct Templates: Sendable {
  enum Template: Equatable {
    case image(String)
    case snapshot(String)
  }

  let service: SandboxService

  /// `base` (the SDK's default) is the default image; then an image by name, a snapshot by
  /// id, a snapshot by name (the newest of that name).
  func resolve(_ templateId: String) async throws -> Template {
    if templateId == "base" { return .image(service.defaultImage) }
    if service.hasImage(templateId) { return .image(templateId) }
    if Identifier.isValid(templateId), (try? await service.getSnapshot(templateId)) != nil {
      return .snapshot(templateId)
    }
    if let named = try await service.listSnapshots().last(where: { $0.name == templateId }) {
      return .snapshot(named.id)
    }
    throw AtelierError.notFound(
      "template \(templateId) not found: name an image, or a snapshot by id or name")
  }
}
