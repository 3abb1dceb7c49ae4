import AtelierAgentAPI
import AtelierCore
import AtelierHTTP
import AtelierManager
import Hummingbird
import Synchronization

/// The manager's REST routes.
struct ManagerAPI: Sendable {
  let service: SandboxService
  let health: HealthChecker
  let proxy: AgentProxy
  let heartbeat: Duration
  /// Filled once the route list exists: `/openapi.json` describes the list it belongs to.
  let document = DocumentBox()

  func makeRoutes() -> [APIRoute] {
    let routes = routeList() + lifecycleRoutes(heartbeat: heartbeat) + agentRoutes(proxy: proxy)
    document.set(ManagerServer.openAPIDocument(routes))
    return routes
  }

  private func routeList() -> [APIRoute] {
    let error = Schemas.ref("Error")
    let sandboxId = APIRoute.pathParameter("id", "sandbox id")
    return [
      APIRoute(
        .get, "/health", summary: "Manager health and readiness checks", tag: "system",
        requiresAuth: false, responses: [200: ("health report", Schemas.ref("Health"))]
      ) { _, _ in
        json(health.report())
      },
      APIRoute(
        .get, "/openapi.json", summary: "This document", tag: "system", requiresAuth: false,
        responses: [200: ("OpenAPI 3.1 document", ["type": "object"])]
      ) { _, _ in
        json(document.value)
      },
      APIRoute(
        .get, "/api/images", summary: "List built images", tag: "images",
        responses: [200: ("images", ["type": "array", "items": Schemas.ref("Image")])]
      ) { _, _ in
        json(health.images())
      },
      APIRoute(
        .get, "/api/sandboxes", summary: "List sandboxes", tag: "sandboxes",
        parameters: [
          APIRoute.queryParameter(
            "status", "only sandboxes with this status",
            schema: [
              "type": "string", "enum": .array(SandboxStatus.allCases.map { .string($0.rawValue) }),
            ])
        ],
        responses: [
          200: ("sandboxes", ["type": "array", "items": Schemas.ref("Sandbox")]),
          400: ("unknown status", error),
        ]
      ) { request, _ in
        json(try await service.list(status: request.uri.queryParameters.get("status")))
      },
      APIRoute(
        .post, "/api/sandboxes", summary: "Create a sandbox (returns once its agent answers)",
        tag: "sandboxes", requestBody: Schemas.ref("CreateSandbox"),
        responses: [
          201: ("the running sandbox", Schemas.ref("Sandbox")),
          400: ("invalid values", error), 404: ("unknown image", error),
          429: ("sandbox limit reached", error), 503: ("the VM failed to boot", error),
        ]
      ) { request, _ in
        let body = try await request.decodeJSON(CreateSandboxRequest.self)
        return json(try await service.create(body), status: .created)
      },
      APIRoute(
        .get, "/api/sandboxes/{id}", summary: "Get a sandbox", tag: "sandboxes",
        parameters: [sandboxId],
        responses: [200: ("the sandbox", Schemas.ref("Sandbox")), 404: ("unknown sandbox", error)]
      ) { _, context in
        json(try await service.get(try context.parameters.require("id")))
      },
      APIRoute(
        .delete, "/api/sandboxes/{id}",
        summary: "Delete a sandbox: kill its VM, remove its disk and files", tag: "sandboxes",
        parameters: [sandboxId],
        responses: [
          204: ("deleted", nil), 404: ("unknown sandbox", error),
          409: ("still being created", error),
        ]
      ) { _, context in
        try await service.delete(try context.parameters.require("id"))
        return Response(status: .noContent)
      },
      APIRoute(
        .post, "/api/sandboxes/{id}/exec",
        summary: "Run a command in the sandbox (200 whatever its exit code)", tag: "sandboxes",
        parameters: [sandboxId], requestBody: Schemas.ref("ExecRequest"),
        responses: [
          200: ("the command's result", Schemas.ref("ExecResult")),
          400: ("invalid request", error), 404: ("unknown sandbox", error),
          409: ("the sandbox is not running", error), 503: ("the agent is unreachable", error),
        ]
      ) { request, context in
        let body = try await request.decodeJSON(ExecRequest.self)
        return json(try await service.exec(try context.parameters.require("id"), body))
      },
    ]
  }
}

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
  jsonResponse(value, status: status, encoder: .atelier)
}

final class DocumentBox: Sendable {
  private let stored = Mutex<JSONValue>(.null)
  func set(_ value: JSONValue) { stored.withLock { $0 = value } }
  var value: JSONValue { stored.withLock { $0 } }
}
