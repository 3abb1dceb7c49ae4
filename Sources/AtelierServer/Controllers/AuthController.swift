import AtelierCore
import AtelierStore
import Foundation
import Hummingbird

/// Browser sessions: a key traded for a signed, expiring, revocable cookie; who am I; log out.
struct AuthController {
  let database: AtelierDatabase
  let authenticator: Authenticator

  /// `POST /auth/session`, open to anyone (it takes a key).
  func addPublicRoutes(to routes: DocumentedRoutes) {
    let authenticator = self.authenticator
    routes.raw(
      .post, "session",
      OperationDoc(
        "Trade an API key for a browser session (an httpOnly, SameSite cookie)", tag: "auth",
        errors: [.unauthorized]),
      body: .json(SessionRequest.self),
      responses: [200: .json(SessionStarted.self, "the session (its cookie is set)")]
    ) { request, _ in
      let body = try await request.decodeJSON(SessionRequest.self, decoder: .atelier)
      guard let principal = authenticator.principal(forKey: body.token) else {
        throw AtelierError.unauthorized("invalid or expired key")
      }
      return try startSession(for: principal.userId, request: request)
    }
  }

  /// A new session for `userId`: its row, its cookie, its CSRF token.
  func startSession(for userId: String, request: Request) throws -> Response {
    let expiresAt = Date().addingTimeInterval(SessionSigner.lifetime)
    let session = SessionRecord(
      id: Identifier.make(), userId: userId, createdAt: Date(), expiresAt: expiresAt)
    try database.insert(session)
    try? database.deleteExpiredSessions(before: Date())
    guard let user = try database.user(id: userId) else {
      throw AtelierError.unauthorized("no such user")
    }
    var response = jsonAnswer(
      SessionStarted(
        user: UserInfo(user), csrfToken: authenticator.signer.csrfToken(sessionId: session.id),
        expiresAt: expiresAt))
    response.headers[.setCookie] = Self.cookie(
      authenticator.signer.cookieValue(sessionId: session.id, expiresAt: expiresAt),
      maxAge: Int(SessionSigner.lifetime), request: request)
    return response
  }

  /// `/auth/me` and `/auth/logout`, behind authentication.
  func addRoutes(to routes: DocumentedRoutes) {
    let database = self.database
    let signer = authenticator.signer
    routes.json(.get, "me", OperationDoc("Who you are", tag: "auth")) { _, context in
      let caller = try context.caller()
      guard let user = try database.user(id: caller.userId) else {
        throw AtelierError.unauthorized("no such user")
      }
      switch caller.credential {
      case .apiKey:
        return Whoami(user: UserInfo(user), authenticatedBy: "key")
      case .session(let id):
        return Whoami(
          user: UserInfo(user), authenticatedBy: "session",
          csrfToken: signer.csrfToken(sessionId: id))
      }
    }
    routes.raw(
      .post, "logout", OperationDoc("End this browser session", tag: "auth"),
      responses: [204: .empty("ended (the cookie is cleared)")]
    ) { request, context in
      if case .session(let id) = try context.caller().credential {
        try database.deleteSession(id: id)
      }
      var response = Response(status: .noContent)
      response.headers[.setCookie] = Self.cookie("", maxAge: 0, request: request)
      return response
    }
  }

  /// The session cookie: httpOnly, SameSite=Lax (sent on top-level navigations only), and
  /// Secure unless the manager is reached over plain HTTP on loopback.
  static func cookie(
    _ value: String, maxAge: Int, request: Request, name: String = SessionSigner.cookieName,
    path: String = "/"
  ) -> String {
    var parts = [
      "\(name)=\(value)", "Path=\(path)", "HttpOnly", "SameSite=Lax", "Max-Age=\(maxAge)",
    ]
    let host = (request.head.authority ?? "").split(separator: ":").first.map(String.init) ?? ""
    let loopback =
      ["localhost", "127.0.0.1", "[::1]"].contains(host) || host.hasSuffix(".localhost")
    let https = request.headers[.init("X-Forwarded-Proto")!] == "https"
    if https || !loopback { parts.append("Secure") }
    return parts.joined(separator: "; ")
  }
}

extension SessionRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("token", "minLength", 1)
  }
}
