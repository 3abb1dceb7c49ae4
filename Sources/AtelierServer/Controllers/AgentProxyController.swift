import AtelierAgentAPI
import AtelierCore
import AtelierManager
import Hummingbird
import HummingbirdWebSocket

/// One agent operation as the manager exposes it under `/api/sandboxes/{id}`.
struct ProxiedOperation: @unchecked Sendable {
  var method: HTTPRequest.Method
  /// The agent's path, e.g. `/services/{name}`.
  var path: String
  var summary: String
  var tag: String
  var body: BodyDoc?
  var response: ResponseDoc
  var status = 200
  var query: [QueryParameter] = []
  var webSocket = false
  /// Path parameters its answer gives values for (see `RouteDoc.produces`).
  var produces: [String: String] = [:]
}

/// The agent's routes, proxied unchanged to the sandbox's agent (bodies streamed both ways,
/// WebSockets piped frame by frame).
struct AgentProxyController {
  let service: SandboxService
  let proxy: AgentProxy

  static let errors: [AtelierError.Code] = [
    .notFound, .conflict, .sandboxNotRunning, .unavailable, .forbidden,
  ]

  func addRoutes(to routes: DocumentedRoutes) {
    let service = self.service
    let proxy = self.proxy
    for operation in Self.operations {
      let path = "sandboxes/{id}\(operation.path)"
      let doc = OperationDoc(
        operation.summary, tag: operation.tag, errors: Self.errors, query: operation.query,
        produces: operation.produces)
      let agentPath = operation.path
      if operation.webSocket {
        routes.webSocket(
          path, doc,
          shouldUpgrade: { _, context in
            _ = try await service.agentEndpoint(try context.parameters.require("id"))
          },
          onUpgrade: { inbound, outbound, context in
            let parameters = context.requestContext.parameters
            try await proxy.pipe(
              sandboxId: try parameters.require("id"),
              agentPath: try Self.fill(agentPath, from: parameters),
              inbound: inbound, outbound: outbound)
          })
        continue
      }
      routes.raw(
        operation.method, path, doc, body: operation.body,
        responses: [operation.status: operation.response]
      ) { request, context in
        try await proxy.forward(
          request, sandboxId: try context.parameters.require("id"),
          agentPath: try Self.fill(agentPath, from: context.parameters))
      }
    }
  }

  /// The agent path with the request's `{name}` and `{sid}` filled in.
  static func fill(_ template: String, from parameters: Parameters) throws -> String {
    var path = template
    for name in ["name", "sid"] where path.contains("{\(name)}") {
      path = path.replacingOccurrences(of: "{\(name)}", with: try parameters.require(name))
    }
    return path
  }
}
