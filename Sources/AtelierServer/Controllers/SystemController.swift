import AtelierCore
import AtelierManager
import Hummingbird
import NIOCore
import Synchronization

/// Health, the document itself, images, host statistics, clean-up and the event stream.
struct SystemController {
  let service: SandboxService
  let health: HealthChecker
  let document: DocumentBox
  let heartbeat: Duration

  /// Routes anyone may call.
  func addPublicRoutes(to routes: DocumentedRoutes) {
    routes.json(.get, "health", OperationDoc("Manager health and readiness checks", tag: "system"))
    { [health] _, _ in health.report() }
    routes.json(
      .get, "openapi.json", OperationDoc("This document (OpenAPI 3.1)", tag: "system"),
      description: "the OpenAPI document"
    ) { [document] _, _ in document.value }
  }

  /// Routes only admins may use.
  func addAdminRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    routes.json(
      .post, "system/cleanup",
      OperationDoc(
        "Reconcile now: remove orphaned VMs, disks, folders; mark dead sandboxes", tag: "system"),
      description: "what was changed"
    ) { _, _ in await service.reconcile() }
  }

  func addRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    routes.json(.get, "images", OperationDoc("List built images", tag: "images")) {
      [health] _, _ in health.images()
    }
    routes.json(
      .get, "system/stats",
      OperationDoc("Host CPU, memory, disk; sandboxes by status; the limit", tag: "system")
    ) { _, _ in try await service.stats() }
    routes.raw(
      .get, "events",
      OperationDoc(
        "Server-sent events: sandbox.created|updated|deleted, snapshot.created|deleted; "
          + "Last-Event-ID resumes", tag: "events"),
      responses: [200: .eventStream("an event stream")]
    ) { [heartbeat] request, context in
      let lastId = request.headers[.init("Last-Event-ID")!].flatMap { Int($0) }
      let requester = try context.caller().requester
      return eventStream(
        await service.events.subscribe(after: lastId), heartbeat: heartbeat,
        visible: { requester.mayAccess(ownedBy: $0.ownerId) })
    }
  }
}

/// The document of the router it belongs to, filled once every route is registered.
final class DocumentBox: Sendable {
  private let stored = Mutex<JSONValue>(.null)
  func set(_ value: JSONValue) { stored.withLock { $0 = value } }
  var value: JSONValue { stored.withLock { $0 } }
}

/// `text/event-stream` from the bus, with a comment line every `heartbeat`.
func eventStream(
  _ events: AsyncStream<EventBus.Event>, heartbeat: Duration,
  visible: @escaping @Sendable (EventBus.Event) -> Bool
) -> Response {
  let body = ResponseBody { writer in
    let (chunks, continuation) = AsyncStream.makeStream(of: String.self)
    let forward = Task {
      for await event in events where visible(event) {
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
