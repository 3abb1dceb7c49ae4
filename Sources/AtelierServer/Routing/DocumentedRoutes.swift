import AtelierCore
import AtelierHTTP
import Hummingbird
import HummingbirdWebSocket
import NIOCore

typealias Context = ManagerRequestContext

/// How an operation is described, besides what its types say.
struct OperationDoc {
  var summary: String
  var tag: String
  /// The error codes the handler may answer with (400 and, behind a token, 401 always apply).
  var errors: [AtelierError.Code] = []
  var query: [QueryParameter] = []
  /// Path parameters its answer gives values for (see `RouteDoc.produces`).
  var produces: [String: String] = [:]

  init(
    _ summary: String, tag: String, errors: [AtelierError.Code] = [], query: [QueryParameter] = [],
    produces: [String: String] = [:]
  ) {
    self.summary = summary
    self.tag = tag
    self.errors = errors
    self.query = query
    self.produces = produces
  }
}

/// Registers a handler and its documentation in one call, on a router group whose middleware
/// (authentication for `/api`) the route then has. Request and response schemas come from the
/// handler's own types.
struct DocumentedRoutes {
  let group: RouterGroup<Context>
  /// The group's path, for the document (`/api`, or empty for the root).
  let prefix: String
  let table: RouteTable
  let requiresAuth: Bool
  /// Behind `AdminOnlyMiddleware` too (members get 403).
  var requiresAdmin = false

  func fullPath(_ path: String) -> String { path.isEmpty ? prefix : "\(prefix)/\(path)" }

  func record(
    _ method: HTTPRequest.Method, _ path: String, _ doc: OperationDoc, body: BodyDoc?,
    responses: [Int: ResponseDoc], webSocket: Bool = false
  ) {
    table.add(
      RouteDoc(
        method: method, path: fullPath(path), summary: doc.summary, tag: doc.tag,
        requiresAuth: requiresAuth, query: doc.query, body: body, responses: responses,
        webSocket: webSocket, errors: doc.errors + (requiresAdmin ? [.forbidden] : []),
        produces: doc.produces))
  }

  /// A route answering `Output` as JSON.
  func json<Output: Codable & Sendable>(
    _ method: HTTPRequest.Method, _ path: String, _ doc: OperationDoc,
    status: HTTPResponse.Status = .ok, description: String = "the result",
    _ handler: @escaping @Sendable (Request, Context) async throws -> Output
  ) {
    record(method, path, doc, body: nil, responses: [status.code: .json(Output.self, description)])
    group.on(RouterPath(path), method: method) { request, context in
      jsonAnswer(try await handler(request, context), status: status)
    }
  }

  /// A route taking `Input` and answering `Output`, both JSON.
  func json<Input: Codable & Sendable, Output: Codable & Sendable>(
    _ method: HTTPRequest.Method, _ path: String, _ doc: OperationDoc, body: Input.Type,
    status: HTTPResponse.Status = .ok, description: String = "the result",
    _ handler: @escaping @Sendable (Input, Request, Context) async throws -> Output
  ) {
    record(
      method, path, doc, body: .json(Input.self),
      responses: [status.code: .json(Output.self, description)])
    group.on(RouterPath(path), method: method) { request, context in
      let input = try await request.decodeJSON(Input.self, decoder: .atelier)
      return jsonAnswer(try await handler(input, request, context), status: status)
    }
  }

  /// A route answering 204 with no body.
  func noContent(
    _ method: HTTPRequest.Method, _ path: String, _ doc: OperationDoc,
    _ handler: @escaping @Sendable (Request, Context) async throws -> Void
  ) {
    record(method, path, doc, body: nil, responses: [204: .empty("done")])
    group.on(RouterPath(path), method: method) { request, context in
      try await handler(request, context)
      return Response(status: .noContent)
    }
  }

  /// A route that builds its own response (streams, proxied answers), documented explicitly.
  func raw(
    _ method: HTTPRequest.Method, _ path: String, _ doc: OperationDoc, body: BodyDoc? = nil,
    responses: [Int: ResponseDoc],
    _ handler: @escaping @Sendable (Request, Context) async throws -> Response
  ) {
    record(method, path, doc, body: body, responses: responses)
    group.on(RouterPath(path), method: method, use: handler)
  }

  /// A WebSocket route, on a group behind `WebSocketAuthenticationMiddleware`. Every upgrade
  /// is accepted; then `authorize` (after the authentication's outcome) decides, and a refusal
  /// closes the socket with its code (`WebSocketRefusal`) before `serve` is ever called. A GET
  /// without an upgrade answers the authentication's error, else 400.
  func webSocket<Target: Sendable>(
    _ path: String, _ doc: OperationDoc,
    authorize: @escaping @Sendable (Context) async throws -> Target,
    serve:
      @escaping @Sendable (
        Target, WebSocketInboundStream, WebSocketOutboundWriter, WebSocketRouterContext<Context>
      ) async throws -> Void
  ) {
    record(.get, path, doc, body: nil, responses: [101: .webSocketUpgrade], webSocket: true)
    group.ws(
      RouterPath(path),
      shouldUpgrade: { request, context in
        guard request.isWebSocketUpgrade else {
          if let failure = context.authenticationFailure { throw failure }
          throw AtelierError.validation(
            "this endpoint needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
        }
        return .upgrade([:])
      },
      onUpgrade: { inbound, outbound, context in
        let target: Target
        do {
          if let failure = context.requestContext.authenticationFailure { throw failure }
          target = try await authorize(context.requestContext)
        } catch {
          let refusal = WebSocketRefusal(error)
          context.logger.info(
            "WebSocket refused",
            metadata: ["code": "\(refusal.code)", "reason": "\(refusal.reason)"])
          try? await outbound.close(.unknown(refusal.code), reason: refusal.trimmedReason)
          return
        }
        try await serve(target, inbound, outbound, context)
      })
  }
}

extension Request {
  var isWebSocketUpgrade: Bool {
    headers[.upgrade]?.lowercased() == "websocket"
  }
}

func jsonAnswer<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) -> Response {
  jsonResponse(value, status: status, encoder: .atelier)
}
