import AtelierCore
import AtelierHTTP
import AtelierManager
import Hummingbird
import NIOCore

/// Lifecycle, snapshots, forks, events and system routes.
extension ManagerAPI {
  func lifecycleRoutes(heartbeat: Duration) -> [APIRoute] {
    let error = Schemas.ref("Error")
    let sandbox = Schemas.ref("Sandbox")
    let sandboxId = APIRoute.pathParameter("id", "sandbox id")
    let service = self.service
    var routes: [APIRoute] = []
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
      routes.append(
        APIRoute(
          .post, "/api/sandboxes/{id}/\(name)", summary: summary, tag: "lifecycle",
          parameters: [sandboxId],
          responses: [
            200: ("the sandbox afterwards", sandbox), 404: ("unknown sandbox", error),
            409: ("not possible in the sandbox's status", error),
            429: ("sandbox limit reached", error),
            503: ("the VM failed", error),
          ]
        ) { _, context in
          json(try await operation(service, try context.parameters.require("id")))
        })
    }
    routes += [
      APIRoute(
        .patch, "/api/sandboxes/{id}", summary: "Change the idle policy", tag: "lifecycle",
        parameters: [sandboxId], requestBody: Schemas.ref("UpdateSandbox"),
        responses: [
          200: ("the sandbox", sandbox), 400: ("invalid values", error),
          404: ("unknown sandbox", error),
        ]
      ) { request, context in
        let body = try await request.decodeJSON(UpdateSandboxRequest.self)
        return json(try await service.update(try context.parameters.require("id"), body))
      },
      APIRoute(
        .post, "/api/sandboxes/{id}/snapshots",
        summary: "Snapshot memory and disk (the VM pauses only while its memory is written)",
        tag: "snapshots", parameters: [sandboxId], requestBody: Schemas.ref("SnapshotRequest"),
        responses: [
          201: ("the snapshot", Schemas.ref("Snapshot")), 404: ("unknown sandbox", error),
          409: ("the sandbox is not running", error),
        ]
      ) { request, context in
        let body = try await request.decodeJSON(SnapshotRequest.self)
        return json(
          try await service.snapshot(try context.parameters.require("id"), name: body.name),
          status: .created)
      },
      APIRoute(
        .post, "/api/sandboxes/{id}/fork",
        summary: "N running sandboxes continuing from this one's memory and disk", tag: "snapshots",
        parameters: [sandboxId], requestBody: Schemas.ref("ForkRequest"),
        responses: [
          201: (
            "the forks",
            Schemas.object(
              ["sandboxes": ["type": "array", "items": sandbox]], required: ["sandboxes"])
          ),
          400: ("invalid count", error), 404: ("unknown sandbox", error),
          409: ("not running", error),
          429: ("the limit does not allow that many", error),
        ]
      ) { request, context in
        let body = try await request.decodeJSON(ForkRequest.self)
        let forks = try await service.fork(try context.parameters.require("id"), count: body.count)
        return json(ForkResponse(sandboxes: forks), status: .created)
      },
      APIRoute(
        .get, "/api/snapshots", summary: "List snapshots", tag: "snapshots",
        responses: [200: ("snapshots", ["type": "array", "items": Schemas.ref("Snapshot")])]
      ) { _, _ in
        json(try await service.listSnapshots())
      },
      APIRoute(
        .get, "/api/snapshots/{snapshotId}", summary: "Get a snapshot", tag: "snapshots",
        parameters: [APIRoute.pathParameter("snapshotId", "snapshot id")],
        responses: [
          200: ("the snapshot", Schemas.ref("Snapshot")), 404: ("unknown snapshot", error),
        ]
      ) { _, context in
        json(try await service.getSnapshot(try context.parameters.require("snapshotId")))
      },
      APIRoute(
        .delete, "/api/snapshots/{snapshotId}",
        summary: "Delete a snapshot (sandboxes restored from it keep working)", tag: "snapshots",
        parameters: [APIRoute.pathParameter("snapshotId", "snapshot id")],
        responses: [204: ("deleted", nil), 404: ("unknown snapshot", error)]
      ) { _, context in
        try await service.deleteSnapshot(try context.parameters.require("snapshotId"))
        return Response(status: .noContent)
      },
      APIRoute(
        .get, "/api/events",
        summary:
          "Server-sent events: sandbox.created|updated|deleted, snapshot.created|deleted; Last-Event-ID resumes",
        tag: "events",
        responses: [200: ("an event stream (text/event-stream)", ["type": "string"])]
      ) { request, _ in
        let lastId = request.headers[.init("Last-Event-ID")!].flatMap { Int($0) }
        return eventStream(await service.events.subscribe(after: lastId), heartbeat: heartbeat)
      },
      APIRoute(
        .post, "/api/system/cleanup",
        summary: "Reconcile now: remove orphaned VMs, disks, folders; mark dead sandboxes",
        tag: "system",
        responses: [200: ("what was changed", Schemas.ref("CleanupReport"))]
      ) { _, _ in
        json(await service.reconcile())
      },
      APIRoute(
        .get, "/api/system/stats",
        summary: "Host CPU, memory, disk; sandboxes by status; the limit",
        tag: "system", responses: [200: ("statistics", Schemas.ref("SystemStats"))]
      ) { _, _ in
        json(try await service.stats())
      },
    ]
    return routes
  }
}

/// `text/event-stream` from the bus, with a comment line every `heartbeat`.
func eventStream(_ events: AsyncStream<EventBus.Event>, heartbeat: Duration) -> Response {
  let body = ResponseBody { writer in
    let (chunks, continuation) = AsyncStream.makeStream(of: String.self)
    let forward = Task {
      for await event in events {
        continuation.yield(
          "id: \(event.id)\nevent: \(event.type)\ndata: \(String(decoding: event.data, as: UTF8.self))\n\n"
        )
      }
      continuation.finish()
    }
    let beat = Task {
      while !Task.isCancelled {
        try? await Task.sleep(for: heartbeat)
        continuation.yield(": heartbeat\n\n")
      }
    }
    defer {
      forward.cancel()
      beat.cancel()
    }
    try await writer.write(ByteBuffer(string: ": connected\n\n"))
    for await chunk in chunks {
      try await writer.write(ByteBuffer(string: chunk))
    }
    try await writer.finish(nil)
  }
  return Response(
    status: .ok,
    headers: [
      .contentType: "text/event-stream", .cacheControl: "no-cache", .connection: "keep-alive",
    ],
    body: body)
}
