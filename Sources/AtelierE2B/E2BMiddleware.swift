import AtelierCore
import AtelierHTTP
import Foundation
import HTTPTypes
import Hummingbird
import Logging

/// Whether an `X-API-KEY` opens the E2B API. The one seam between the adapter and the
/// manager's authentication: today the admin token, later an Atelier API key (and its owner).
public struct E2BKeyVerifier: Sendable {
  let verify: @Sendable (String) -> Bool

  public init(_ verify: @escaping @Sendable (String) -> Bool) {
    self.verify = verify
  }
}

extension HTTPField.Name {
  static let apiKey = HTTPField.Name("X-API-KEY")!
  static let shouldRetry = HTTPField.Name("Should-Retry")!
  static let e2bSandboxId = HTTPField.Name("E2b-Sandbox-Id")!
  static let accessToken = HTTPField.Name("X-Access-Token")!
  static let keepalivePing = HTTPField.Name("Keepalive-Ping-Interval")!
  static let nextToken = HTTPField.Name("X-Next-Token")!
}

/// On the control plane's routes: a valid `X-API-KEY`, or 401.
struct E2BKeyMiddleware<Context: RequestContext>: RouterMiddleware {
  let keys: E2BKeyVerifier

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    guard let key = request.headers[.apiKey], !key.isEmpty else {
      throw AtelierError.unauthorized("missing X-API-KEY header")
    }
    guard keys.verify(key) else { throw AtelierError.unauthorized("invalid API key") }
    return try await next(request, context)
  }
}

/// Every failure on the control plane leaves as E2B's `{"code": <status>, "message"}`. A
/// 429 says `Should-Retry: false`: the SDK retries 429s by default, and a retried create over
/// the limit must not become a second sandbox once there is room. Internal detail goes to
/// the log only.
struct E2BErrorMiddleware<Context: RequestContext>: RouterMiddleware {
  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    do {
      return try await next(request, context)
    } catch let error as AtelierError {
      if error.code == .internal || error.cause != nil {
        context.logger.error("e2b \(request.method.rawValue) \(request.uri.path): \(error)")
      }
      return Self.response(status: error.code.httpStatus, message: error.message)
    } catch let error as HTTPError {
      return Self.response(
        status: error.status.code, message: error.body ?? error.status.reasonPhrase)
    } catch {
      context.logger.error("e2b \(request.method.rawValue) \(request.uri.path): \(error)")
      return Self.response(status: 500, message: "internal error; see the manager log")
    }
  }

  static func response(status: Int, message: String) -> Response {
    var response = jsonResponse(
      E2BError(code: status, message: message), status: .init(code: status))
    if status == 429 { response.headers[.shouldRetry] = "false" }
    return response
  }
}
