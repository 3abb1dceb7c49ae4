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
    ) { request, _ in
      try await service.list(status: request.uri.queryParameters.get("status"))
    }
    routes.json(
      .post, "sandboxes",
      OperationDoc(
        "Create a sandbox (returns once its agent answers)", tag: "sandboxes",
        errors: [.notFound, .conflict, .resourceExhausted, .bootFailed],
        produces: ["id": "$response.body#/id"]),
      body: CreateSandboxRequest.self, status: .created, description: "the running sandbox"
    ) { body, _, _ in try await service.create(body) }
    routes.json(
      .get, "sandboxes/{id}", OperationDoc("Get a sandbox", tag: "sandboxes", errors: [.notFound])
    ) { _, context in try await service.get(try context.parameters.require("id")) }
    routes.json(
      .patch, "sandboxes/{id}",
      OperationDoc("Change the idle policy", tag: "lifecycle", errors: [.notFound]),
      body: UpdateSandboxRequest.self
    ) { body, _, context in try await service.update(try context.parameters.require("id"), body) }
    routes.noContent(
      .delete, "sandboxes/{id}",
      OperationDoc(
        "Delete a sandbox: kill its VM, remove its disk and files", tag: "sandboxes",
        errors: [.notFound, .conflict])
    ) { _, context in try await service.delete(try context.parameters.require("id")) }
    routes.json(
      .post, "sandboxes/{id}/exec",
      OperationDoc(
        "Run a command in the sandbox (200 whatever its exit code)", tag: "exec",
        errors: [.notFound, .sandboxNotRunning, .unavailable]),
      body: ExecRequest.self, description: "the command's result"
    ) { body, _, context in try await service.exec(try context.parameters.require("id"), body) }
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
      ) { _, context in try await operation(service, try context.parameters.require("id")) }
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
      try await service.snapshot(try context.parameters.require("id"), name: body.name)
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
          try context.parameters.require("id"), count: body.count, network: body.network))
    }
    routes.json(.get, "snapshots", OperationDoc("List snapshots", tag: "snapshots")) { _, _ in
      try await service.listSnapshots()
    }
    routes.json(
      .get, "snapshots/{snapshotId}",
      OperationDoc("Get a snapshot", tag: "snapshots", errors: [.notFound])
    ) { _, context in
      try await service.getSnapshot(try context.parameters.require("snapshotId"))
    }
    routes.noContent(
      .delete, "snapshots/{snapshotId}",
      OperationDoc(
        "Delete a snapshot (sandboxes restored from it keep working)", tag: "snapshots",
        errors: [.notFound])
    ) { _, context in
      try await service.deleteSnapshot(try context.parameters.require("snapshotId"))
    }
  }
}
