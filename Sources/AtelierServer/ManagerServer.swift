import AtelierCore
import AtelierHTTP
import AtelierHost
import AtelierManager
import AtelierStore
import Crypto
import Foundation
import Hummingbird
import Logging
import Synchronization

/// Builds and runs the manager's HTTP server.
public enum ManagerServer {
  static func openAPIDocument(_ routes: [APIRoute]) -> JSONValue {
    OpenAPIDocument.make(routes: routes, schemas: Schemas.all, version: AtelierVersion.current)
  }

  public static func makeApplication(
    config: Config, service: SandboxService, database: AtelierDatabase, drivers: HostDrivers,
    qemuPath: String?, logger: Logger
  ) -> some ApplicationProtocol {
    let api = ManagerAPI(
      service: service, health: HealthChecker(config: config, drivers: drivers, qemuPath: qemuPath))
    let routes = api.makeRoutes()
    let router = Router()
    for route in routes {
      let routerPath = RouterPath(route.path)
      router.on(routerPath, method: route.method) { request, context in
        try await route.handler(request, context)
      }
    }
    let responder = ErrorAndAuthResponder(
      inner: router.buildResponder(), tokens: TokenVerifier(database: database), logger: logger)
    return Application(
      responder: responder,
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
      let token = header.hasPrefix("Bearer ") ? String(header.dropFirst(7)) : ""
      guard !token.isEmpty, tokens.isValid(token) else {
        return errorResponse(
          status: .unauthorized, code: AtelierError.Code.unauthorized.rawValue,
          message: token.isEmpty ? "missing bearer token" : "invalid token")
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
