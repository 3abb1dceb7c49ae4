import AtelierAgentAPI
import AtelierCore
import AtelierManager
import Hummingbird
import HummingbirdWebSocket

/// The agent's routes that users reach, proxied unchanged to the sandbox's agent (bodies
/// streamed both ways, WebSockets piped frame by frame), from the agent's own operation table:
/// a route cannot be on the agent and not here, or documented and not served.
struct AgentProxyController {
  let service: SandboxService
  let proxy: AgentProxy

  /// What the manager itself may answer, besides what the agent may.
  static let managerErrors: [AtelierError.Code] = [
    .notFound, .sandboxNotRunning, .unavailable,
  ]

  /// Operations whose answer names something later operations take in their path (for the
  /// document's links).
  static let produces: [AgentOperation.ID: [String: String]] = [
    .serviceDefine: ["name": "$request.path.name"], .devStart: ["name": "$request.path.name"],
    .terminalCreate: ["sid": "$response.body#/id"],
  ]

  /// Proxied operations the manager answers itself (`exec` counts as activity and resumes a
  /// paused sandbox; `SandboxesController` serves it).
  static let servedByManager: Set<AgentOperation.ID> = [.exec]

  /// HTTP routes go to `routes`, WebSocket routes to `webSockets` (a group whose
  /// authentication closes the socket rather than refusing the upgrade).
  func addRoutes(to routes: DocumentedRoutes, webSockets: DocumentedRoutes) {
    for operation in AgentOperations.proxied where !Self.servedByManager.contains(operation.id) {
      add(operation, to: routes, webSockets: webSockets)
    }
  }

  func add(_ operation: AgentOperation, to routes: DocumentedRoutes, webSockets: DocumentedRoutes) {
    let service = self.service
    let proxy = self.proxy
    let path = "sandboxes/{id}\(operation.path)"
    let errors = Set(operation.errors + Self.managerErrors).subtracting([.unauthorized, .internal])
    let doc = OperationDoc(
      operation.summary, tag: operation.tag,
      errors: AtelierError.Code.allCases.filter(errors.contains),
      query: operation.query.map(Self.queryParameter),
      produces: Self.produces[operation.id] ?? [:])
    if operation.isWebSocket {
      webSockets.webSocket(
        path, doc,
        authorize: { context in
          let id = try await service.webSocketTarget(context)
          _ = try await service.agentEndpoint(id)
          return id
        },
        serve: { id, inbound, outbound, context in
          try await proxy.pipe(
            sandboxId: id,
            agentPath: Self.agentPath(operation, context.requestContext.parameters),
            inbound: inbound, outbound: outbound)
        })
      return
    }
    routes.raw(
      HTTPRequest.Method(rawValue: operation.method.rawValue)!, path, doc,
      body: operation.request.map(Self.bodyDoc),
      responses: [operation.status: Self.responseDoc(operation)]
    ) { request, context in
      try await proxy.forward(
        request, sandboxId: try await service.accessibleSandbox(context),
        agentPath: Self.agentPath(operation, context.parameters))
    }
  }

  /// The agent's path for this request (its `{name}` and `{sid}` filled in).
  static func agentPath(_ operation: AgentOperation, _ parameters: Parameters) -> String {
    var values: [String: String] = [:]
    for parameter in operation.pathParameters {
      values[parameter.name] = parameters.get(parameter.name)
    }
    return operation.concretePath(values)
  }

  static func bodyDoc(_ body: AgentBody) -> BodyDoc {
    switch body {
    case .json(let type): .json(type)
    case .raw(let contentType): .binary("the raw bytes", contentType: contentType)
    }
  }

  static func responseDoc(_ operation: AgentOperation) -> ResponseDoc {
    switch operation.response {
    case .json(let type): .json(type, "the result")
    case .raw(let contentType): .binary("the raw bytes", contentType: contentType)
    case nil: .empty("done")
    }
  }

  static func queryParameter(_ parameter: AgentParameter) -> QueryParameter {
    let schema: JSONValue =
      switch parameter.format {
      case .text: ["type": "string"]
      case .pattern(let pattern): ["type": "string", "pattern": .string(pattern)]
      case .boolean: ["type": "boolean"]
      case .integer(let minimum): ["type": "integer", "minimum": .number(Double(minimum))]
      }
    return QueryParameter(
      name: parameter.name, description: parameter.description, schema: schema,
      required: parameter.required)
  }
}
