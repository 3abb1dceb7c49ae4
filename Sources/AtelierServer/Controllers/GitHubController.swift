import AtelierCore
import Foundation
import HTTPTypes
import Hummingbird

/// `/auth/github` and its callback, when GitHub login is configured.
struct GitHubController {
  let login: GitHubLogin
  let sessions: AuthController

  func addPublicRoutes(to routes: DocumentedRoutes) {
    let login = self.login
    let sessions = self.sessions
    routes.raw(
      .get, "github",
      OperationDoc("Log in with GitHub: redirects there (PKCE S256, a signed state)", tag: "auth"),
      responses: [302: .empty("to GitHub's authorization page")]
    ) { request, _ in
      let (state, nonce) = login.newState()
      var response = Response(status: .found)
      response.headers[.location] = login.authorizeLocation(state: state, nonce: nonce)
      response.headers[.setCookie] = AuthController.cookie(
        nonce, maxAge: Int(GitHubLogin.stateLifetime), request: request,
        name: GitHubLogin.stateCookie, path: "/auth/github")
      return response
    }
    routes.raw(
      .get, "github/callback",
      OperationDoc(
        "Where GitHub sends the browser back: a session for an allowed user", tag: "auth",
        errors: [.unauthorized, .forbidden, .unavailable],
        query: [
          QueryParameter(
            name: "code", description: "from GitHub", schema: ["type": "string"], required: true),
          QueryParameter(
            name: "state", description: "as sent", schema: ["type": "string"], required: true),
        ]),
      responses: [200: .json(SessionStarted.self, "the session (its cookie is set)")]
    ) { request, _ in
      let query = request.uri.queryParameters
      guard let code = query.get("code"), let state = query.get("state") else {
        throw AtelierError.validation("code and state are required")
      }
      let nonce = try login.verify(
        state: state, cookie: request.cookies[GitHubLogin.stateCookie]?.value)
      let user = try await login.user(code: code, nonce: nonce)
      var response = try sessions.startSession(for: user.id, request: request)
      response.headers.append(
        HTTPField(
          name: .setCookie,
          value: AuthController.cookie(
            "", maxAge: 0, request: request, name: GitHubLogin.stateCookie,
            path: "/auth/github")))
      return response
    }
  }
}
