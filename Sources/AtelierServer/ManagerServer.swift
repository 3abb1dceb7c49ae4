import AtelierCore
import AtelierHTTP
import AtelierHost
import AtelierManager
import AtelierStore
import Crypto
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import Synchronization

/// Builds and runs the manager's HTTP server.
public enum ManagerServer {
  static func openAPIDocument(_ routes: [APIRoute]) -> JSONValue {
    OpenAPIDocument.make(
      routes: routes, schemas: Schemas.all.merging(Schemas.agent) { first, _ in first },
      version: AtelierVersion.current)
  }

  public static func makeApplication(
    config: Config, service: SandboxService, database: AtelierDatabase, drivers: HostDrivers,
    qemuPath: String?, logger: Logger
  ) -> some ApplicationProtocol {
    let proxy = AgentProxy(service: service, logger: logger)
    let api = ManagerAPI(
      service: service, health: HealthChecker(config: config, drivers: drivers, qemuPath: qemuPath),
      proxy: proxy, heartbeat: .seconds(config.eventsHeartbeatSeconds))
    let routes = api.makeRoutes()
    let router = Router()
    for route in routes {
      router.on(RouterPath(route.path), method: route.method) { request, context in
        try await route.handler(request, context)
      }
    }
    let tokens = TokenVerifier(database: database)
    // WebSocket upgrades are answered by their own router, so they check the token themselves
    // (from the Authorization header, or `?token=` for browsers).
    let webSockets = Router(context: BasicWebSocketRequestContext.self)
    for socket in ManagerAPI.agentWebSockets {
      let agentPath = socket.path
      webSockets.ws(
        RouterPath("/api/sandboxes/{id}\(socket.path)"),
        shouldUpgrade: { request, context in
          guard tokens.isValid(request: request) else {
            throw AtelierError(.unauthorized, "missing or invalid token")
          }
          _ = try await service.agentEndpoint(try context.parameters.require("id"))
          return .upgrade([:])
        },
        onUpgrade: { inbound, outbound, context in
          var path = agentPath
          if path.contains("{sid}") {
            path = path.replacingOccurrences(
              of: "{sid}", with: try context.requestContext.parameters.require("sid"))
          }
          try await proxy.pipe(
            sandboxId: try context.requestContext.parameters.require("id"), agentPath: path,
            inbound: inbound, outbound: outbound)
        })
    }
    let responder = ErrorAndAuthResponder(
      inner: router.buildResponder(), tokens: tokens, logger: logger)
    return Application(
      responder: responder,
      server: .http1WebSocketUpgrade(
        webSocketRouter: webSockets, configuration: .init(maxFrameSize: 1 << 20)),
      configuration: .init(
        address: .hostname(config.serverHost, port: config.serverPort), serverName: "atelier"),
      logger: logger)
  }
}

/// Checks bearer tokens against the stored hashes (remembering the good ones).
final class TokenVerifier: Sendable {
  let database: AtelierDatabase
  private let known = Mutex(Set<String>())

  init(database: AtelierDatabase) { self.database = database }

  static func hash(_ token: String) -> String {
    SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
  }

  /// A bearer token in the Authorization header, or a `token` query parameter.
  func isValid(request: Request) -> Bool {
    let header = request.headers[.authorization] ?? ""
    if header.hasPrefix("Bearer ") { return isValid(String(header.dropFirst(7))) }
    if let token = request.uri.queryParameters.get("token") { return isValid(token) }
    return false
  }

  func isValid(_ token: String) -> Bool {
    let hash = Self.hash(token)
    if known.withLock({ $0.contains(hash) }) { return true }
    guard (try? database.token(hash: hash)) != nil else { return false }
    known.withLock { _ = $0.insert(hash) }
    return true
  }
}

/// Every `/api/*` request needs a valid bearer token; every failure leaves as
/// `{"error", "message"}` with its status (internal details go to the log only).
struct ErrorAndAuthResponder<Inner: HTTPResponder>: HTTPResponder
where Inner.Context == BasicRequestContext {
  typealias Context = BasicRequestContext
  let inner: Inner
  let tokens: TokenVerifier
  let logger: Logger

  func respond(to request: Request, context: Context) async throws -> Response {
    if request.uri.path.hasPrefix("/api/") || request.uri.path == "/api" {
      let header = request.headers[.authorization] ?? ""
      guard tokens.isValid(request: request) else {
        return errorResponse(
          status: .unauthorized, code: AtelierError.Code.unauthorized.rawValue,
          message: header.isEmpty ? "missing bearer token" : "invalid token")
      }
    }
    do {
      let response = try await inner.respond(to: request, context: context)
      // The router answers an unknown route with a bare 404.
      if response.status == .notFound && response.headers[.contentType] == nil {
        return errorResponse(
          status: .notFound, code: AtelierError.Code.notFound.rawValue,
          message: "no route \(request.method.rawValue) \(request.uri.path)")
      }
      return response
    } catch let error as AtelierError {
      return errorResponse(
        status: .init(code: error.code.httpStatus), code: error.code.rawValue,
        message: error.message)
    } catch let error as APIError {
      return errorResponse(status: error.status, code: error.code, message: error.message)
    } catch let error as HTTPError {
      let code: AtelierError.Code =
        switch error.status.code {
        case 404: .notFound
        case 405: .validation
        case 400..<500: .validation
        default: .internal
        }
      let message =
        error.status == .notFound
        ? "no route \(request.method.rawValue) \(request.uri.path)"
        : (error.body ?? error.status.reasonPhrase)
      return errorResponse(status: error.status, code: code.rawValue, message: message)
    } catch {
      logger.error("internal error on \(request.method.rawValue) \(request.uri.path): \(error)")
      return errorResponse(
        status: .internalServerError, code: AtelierError.Code.internal.rawValue,
        message: "internal error; see the manager log")
    }
  }
}

/// So an AtelierError thrown where no wrapper catches it (WebSocket upgrades) still answers
/// with its status and JSON body.
extension AtelierError: HTTPResponseError {
  public var status: HTTPResponse.Status { .init(code: code.httpStatus) }
  public func response(from request: Request, context: some RequestContext) throws -> Response {
    errorResponse(status: status, code: code.rawValue, message: message)
  }
}
