import AtelierCore
import AtelierManager
import Hummingbird

/// Sandboxes: list, create, get, change, delete, exec.
struct SandboxesController {
  let service: SandboxService

  func addRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    routes.json(
      .get, "sandboxes",
      OperationDoc(
        "List sandboxes", tag: "sandboxes", errors: [.validation],
        query: [
          QueryParameter(
            name: "status", description: "only sandboxes with this status",
            schema: [
              "type": "string",
              "enum": .array(SandboxStatus.allCases.map { .string($0.rawValue) }),
            ])
        ])
    ) { request, context in
      try await service.list(
        status: request.uri.queryParameters.get("status"),
        ownerId: try context.caller().requester.ownerFilter)
    }
    routes.json(
      .post, "sandboxes",
      OperationDoc(
        "Create a sandbox (returns once its agent answers)", tag: "sandboxes",
        errors: [.notFound, .conflict, .resourceExhausted, .bootFailed],
        produces: ["id": "$response.body#/id"]),
      body: CreateSandboxRequest.self, status: .created, description: "the running sandbox"
    ) { body, _, context in
      let caller = try context.caller()
      if let snapshot = body.snapshot {
        try await service.requireAccess(toSnapshot: snapshot, caller.requester)
      }
      return try await service.create(body, owner: caller.userId)
    }
    routes.json(
      .get, "sandboxes/{id}", OperationDoc("Get a sandbox", tag: "sandboxes", errors: [.notFound])
    ) { _, context in try await service.get(try await service.accessibleSandbox(context)) }
    routes.json(
      .patch, "sandboxes/{id}",
      OperationDoc("Change the idle policy", tag: "lifecycle", errors: [.notFound]),
      body: UpdateSandboxRequest.self
    ) { body, _, context in
      try await service.update(try await service.accessibleSandbox(context), body)
    }
    routes.noContent(
      .delete, "sandboxes/{id}",
      OperationDoc(
        "Delete a sandbox: kill its VM, remove its disk and files", tag: "sandboxes",
        errors: [.notFound, .conflict])
    ) { _, context in try await service.delete(try await service.accessibleSandbox(context)) }
    routes.json(
      .post, "sandboxes/{id}/exec",
      OperationDoc(
        "Run a command in the sandbox (200 whatever its exit code)", tag: "exec",
        errors: [.notFound, .sandboxNotRunning, .unavailable]),
      body: ExecRequest.self, description: "the command's result"
    ) { body, _, context in
      try await service.exec(try await service.accessibleSandbox(context), body)
    }
  }
}

/// Stop, start, restart, pause, resume.
struct LifecycleController {
  let service: SandboxService

  func addRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    let transitions:
      [(String, String, @Sendable (SandboxService, String) async throws -> SandboxInfo)] = [
        (
          "stop", "Stop: the guest syncs and powers off (killed after 15 s); the disk is kept",
          { try await $0.stop($1) }
        ),
        (
          "start", "Start a stopped sandbox from its disk (hostname and services come back)",
          { try await $0.start($1) }
        ),
        ("restart", "Stop, then start", { try await $0.restart($1) }),
        ("pause", "Freeze the VM in memory", { try await $0.pause($1) }),
        ("resume", "Thaw a paused VM (its clock is re-synced)", { try await $0.resume($1) }),
      ]
    for (name, summary, operation) in transitions {
      routes.json(
        .post, "sandboxes/{id}/\(name)",
        OperationDoc(
          summary, tag: "lifecycle",
          errors: [.notFound, .conflict, .resourceExhausted, .bootFailed, .unavailable]),
        description: "the sandbox afterwards"
      ) { _, context in try await operation(service, try await service.accessibleSandbox(context)) }
    }
  }
}

/// Snapshots and forks.
struct SnapshotsController {
  let service: SandboxService

  func addRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    routes.json(
      .post, "sandboxes/{id}/snapshots",
      OperationDoc(
        "Snapshot memory and disk (the VM pauses only while its memory is written)",
        tag: "snapshots", errors: [.notFound, .conflict, .resourceExhausted, .unavailable],
        produces: ["snapshotId": "$response.body#/id"]),
      body: SnapshotRequest.self, status: .created, description: "the snapshot"
    ) { body, _, context in
      try await service.snapshot(try await service.accessibleSandbox(context), name: body.name)
    }
    routes.json(
      .post, "sandboxes/{id}/fork",
      OperationDoc(
        "N running sandboxes continuing from this one's memory and disk", tag: "snapshots",
        errors: [.notFound, .conflict, .resourceExhausted, .bootFailed, .unavailable],
        produces: ["id": "$response.body#/sandboxes/0/id"]),
      body: ForkRequest.self, status: .created, description: "the forks"
    ) { body, _, context in
      ForkResponse(
        sandboxes: try await service.fork(
          try await service.accessibleSandbox(context), count: body.count, network: body.network))
    }
    routes.json(.get, "snapshots", OperationDoc("List snapshots", tag: "snapshots")) {
      _, context in
      try await service.listSnapshots(ownerId: try context.caller().requester.ownerFilter)
    }
    routes.json(
      .get, "snapshots/{snapshotId}",
      OperationDoc("Get a snapshot", tag: "snapshots", errors: [.notFound])
    ) { _, context in
      try await service.getSnapshot(try await service.accessibleSnapshot(context))
    }
    routes.noContent(
      .delete, "snapshots/{snapshotId}",
      OperationDoc(
        "Delete a snapshot (sandboxes restored from it keep working)", tag: "snapshots",
        errors: [.notFound])
    ) { _, context in
      try await service.deleteSnapshot(try await service.accessibleSnapshot(context))
    }
  }
}

extension SandboxService {
  /// The `{id}` of the request, once the caller is known to have access to that sandbox
  /// (404 otherwise, as for one that does not exist).
  func accessibleSandbox(_ context: ManagerRequestContext) async throws -> String {
    let id = try context.parameters.require("id")
    try requireAccess(toSandbox: id, try context.caller().requester)
    return id
  }

  /// The `{id}` of a WebSocket request, told apart for its close code: a sandbox that does
  /// not exist is a 404 (4004), another user's a 403 (4003; its id, 12 random characters, is
  /// not something a member can guess).
  func webSocketTarget(_ context: ManagerRequestContext) async throws -> String {
    let id = try context.parameters.require("id")
    let caller = try context.caller()
    let sandbox = try get(id)
    guard caller.requester.mayAccess(ownedBy: sandbox.ownerId) else {
      throw AtelierError.forbidden("sandbox \(id) is not yours")
    }
    return id
  }

  /// The `{snapshotId}` of the request, once the caller is known to have access to it.
  func accessibleSnapshot(_ context: ManagerRequestContext) async throws -> String {
    let id = try context.parameters.require("snapshotId")
    try requireAccess(toSnapshot: id, try context.caller().requester)
    return id
  }
}
