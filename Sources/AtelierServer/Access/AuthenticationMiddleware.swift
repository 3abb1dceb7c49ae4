import AtelierCore
import AtelierStore
import Foundation
import Hummingbird

/// Who a request comes from: an API key (`Authorization: Bearer`), a browser session cookie
/// (writes also need its CSRF token), or — on WebSocket upgrades only, as browsers cannot set
/// headers there — a key in `?token=`. Checked against the database every time, so a revoked
/// key or session stops working at once.
struct Authenticator: Sendable {
  let database: AtelierDatabase
  let signer: SessionSigner

  /// How often a key's last-used time is written (not on every request).
  static let lastUsedResolution: TimeInterval = 60

  func principal(forKey key: String, now: Date = Date()) -> Principal? {
    guard !key.isEmpty, let record = try? database.apiKey(hash: APIKeys.hash(key)),
      record.expiresAt.map({ $0 > now }) ?? true,
      let user = try? database.user(id: record.userId)
    else { return nil }
    if record.lastUsedAt.map({ now.timeIntervalSince($0) > Self.lastUsedResolution }) ?? true {
      try? database.touchAPIKey(id: record.id, at: now)
    }
    return Principal(
      userId: user.id, userName: user.name, role: user.role, credential: .apiKey(id: record.id))
  }

  func principal(forSession cookie: String, now: Date = Date()) -> Principal? {
    guard let sessionId = signer.verify(cookie, now: now),
      let session = try? database.session(id: sessionId), session.expiresAt > now,
      let user = try? database.user(id: session.userId)
    else { return nil }
    return Principal(
      userId: user.id, userName: user.name, role: user.role, credential: .session(id: session.id))
  }

  func authenticate(_ request: Request) throws -> Principal {
    let header = request.headers[.authorization] ?? ""
    if !header.isEmpty {
      guard header.hasPrefix("Bearer ") else {
        throw AtelierError.unauthorized("the Authorization header must be `Bearer <key>`")
      }
      guard let principal = principal(forKey: String(header.dropFirst("Bearer ".count))) else {
        throw AtelierError.unauthorized("invalid or expired key")
      }
      return principal
    }
    if let queryToken = request.uri.queryParameters.get("token") {
      guard request.isWebSocketUpgrade else {
        throw AtelierError.unauthorized(
          "?token= is accepted on WebSocket upgrades only; send Authorization: Bearer")
      }
      guard let principal = principal(forKey: String(queryToken)) else {
        throw AtelierError.unauthorized("invalid or expired key")
      }
      return principal
    }
    if let cookie = request.cookies[SessionSigner.cookieName]?.value {
      guard let principal = principal(forSession: cookie),
        case .session(let sessionId) = principal.credential
      else { throw AtelierError.unauthorized("session expired or revoked; log in again") }
      // Browsers send cookies with WebSocket upgrades from any page: only this manager's own
      // may use them.
      if request.isWebSocketUpgrade, let origin = request.headers[.origin],
        !Self.isSameOrigin(origin, authority: request.head.authority)
      {
        throw AtelierError.forbidden("a WebSocket with a session cookie from another origin")
      }
      let safe: Set<HTTPRequest.Method> = [.get, .head, .options]
      if !safe.contains(request.method)
        && !signer.isValidCSRF(
          request.headers[.init(SessionSigner.csrfHeader)!], sessionId: sessionId)
      {
        throw AtelierError.forbidden("a write with a session cookie needs its X-CSRF-Token")
      }
      return principal
    }
    throw AtelierError.unauthorized("missing credentials: an API key or a session")
  }
}

extension Authenticator {
  /// Whether an `Origin` (`scheme://host[:port]`) names the host the request was sent to.
  static func isSameOrigin(_ origin: String, authority: String?) -> Bool {
    guard let authority, let range = origin.range(of: "://") else { return false }
    return origin[range.upperBound...].lowercased() == authority.lowercased()
  }
}

/// On every route of the group it is added to: a known caller, or 401.
struct AuthenticationMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext
  let authenticator: Authenticator

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    context.principal = try authenticator.authenticate(request)
    context.logger[metadataKey: "user"] = .string(context.principal?.userName ?? "")
    return try await next(request, context)
  }
}

/// On WebSocket routes: browsers see no HTTP status when an upgrade is refused, so the outcome
/// is recorded instead of thrown, and the route closes the socket with a code that says it
/// (`WebSocketRefusal`).
struct WebSocketAuthenticationMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext
  let authenticator: Authenticator

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    do {
      context.principal = try authenticator.authenticate(request)
      context.logger[metadataKey: "user"] = .string(context.principal?.userName ?? "")
    } catch let error as AtelierError {
      context.authenticationFailure = error
    }
    return try await next(request, context)
  }
}

/// On routes only admins may use (after authentication): 403 for everyone else.
struct AdminOnlyMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    guard context.principal?.isAdmin == true else {
      throw AtelierError.forbidden("only admins may do this")
    }
    return try await next(request, context)
  }
}

extension ManagerRequestContext {
  /// The authenticated caller (routes behind `AuthenticationMiddleware` always have one).
  func caller() throws -> Principal {
    guard let principal else { throw AtelierError.unauthorized("not authenticated") }
    return principal
  }
}
