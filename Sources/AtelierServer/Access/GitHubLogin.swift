import AsyncHTTPClient
import AtelierCore
import AtelierStore
import Crypto
import Foundation
import NIOCore
import NIOHTTP1

/// GitHub OAuth (authorization code with PKCE S256): the `state` is signed and short-lived and
/// must come back to the browser that started (a cookie holds its nonce); the PKCE verifier is
/// derived from the nonce with the session key, so nothing is kept between the two requests.
/// GitHub says who the user is; the allowed users and organizations say whether they may in.
struct GitHubLogin: Sendable {
  let settings: GitHubLoginSettings
  let signer: SessionSigner
  let redirectURL: String
  let database: AtelierDatabase

  static let stateCookie = "atelier_oauth"
  static let stateLifetime: TimeInterval = 600

  // MARK: State and PKCE

  /// A new `state` (`<nonce>.<expiry>.<MAC>`) and the nonce the browser keeps in a cookie.
  func newState(now: Date = Date()) -> (state: String, nonce: String) {
    let nonce = Identifier.make(length: 24)
    let payload =
      "\(nonce).\(Int64(now.addingTimeInterval(Self.stateLifetime).timeIntervalSince1970))"
    return ("\(payload).\(signer.mac("github-state:\(payload)"))", nonce)
  }

  /// The nonce of a `state` whose MAC holds, that has not expired and that the browser's cookie
  /// names; else a 401.
  func verify(state: String, cookie: String?, now: Date = Date()) throws -> String {
    let parts = state.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
    guard parts.count == 3, let expiry = Int64(parts[1]),
      let given = Data(hexadecimal: parts[2]),
      HMAC<SHA256>.isValidAuthenticationCode(
        given, authenticating: Data("github-state:\(parts[0]).\(parts[1])".utf8),
        using: signer.key)
    else { throw AtelierError.unauthorized("the login's state is not one this manager made") }
    guard Date(timeIntervalSince1970: TimeInterval(expiry)) > now else {
      throw AtelierError.unauthorized("the login took too long; start again")
    }
    guard let cookie, cookie == parts[0] else {
      throw AtelierError.unauthorized("the login was started in another browser; start again")
    }
    return parts[0]
  }

  /// The PKCE verifier of a login (43 base64url characters) and its S256 challenge.
  func verifier(nonce: String) -> String {
    Self.base64URL(
      Data(HMAC<SHA256>.authenticationCode(for: Data("pkce:\(nonce)".utf8), using: signer.key)))
  }

  static func challenge(_ verifier: String) -> String {
    base64URL(Data(SHA256.hash(data: Data(verifier.utf8))))
  }

  static func base64URL(_ data: Data) -> String {
    data.base64EncodedString().replacingOccurrences(of: "+", with: "-")
      .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
  }

  /// Where the browser goes to log in.
  func authorizeLocation(state: String, nonce: String) -> String {
    var items = [
      ("client_id", settings.clientId), ("redirect_uri", redirectURL), ("state", state),
      ("code_challenge", Self.challenge(verifier(nonce: nonce))),
      ("code_challenge_method", "S256"), ("allow_signup", "false"),
    ]
    if !settings.allowedOrgs.isEmpty { items.append(("scope", "read:org")) }
    return settings.authorizeURL + "?" + Self.form(items)
  }

  static func form(_ items: [(String, String)]) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    return items.map {
      "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")"
    }.joined(separator: "&")
  }

  // MARK: The callback

  /// Trades the code for a token, asks GitHub who it is, checks it is allowed, and returns the
  /// Atelier user (made a member on first login).
  func user(code: String, nonce: String) async throws -> UserRecord {
    let token = try await accessToken(code: code, nonce: nonce)
    let profile = try await get("/user", token: token, as: GitHubUser.self)
    let login = profile.login.lowercased()
    var allowed = settings.allowedUsers.contains(login)
    if !allowed && !settings.allowedOrgs.isEmpty {
      let orgs = try await get("/user/orgs", token: token, as: [GitHubUser].self)
      allowed = orgs.contains { settings.allowedOrgs.contains($0.login.lowercased()) }
    }
    guard allowed else {
      throw AtelierError.forbidden("GitHub user \(login) is not allowed on this manager")
    }
    return try linkedUser(login: login)
  }

  struct GitHubUser: Decodable { var login: String }

  struct TokenAnswer: Decodable {
    var access_token: String?
    var error: String?
  }

  func accessToken(code: String, nonce: String) async throws -> String {
    var request = HTTPClientRequest(url: settings.tokenURL)
    request.method = .POST
    request.headers.add(name: "accept", value: "application/json")
    request.headers.add(name: "content-type", value: "application/x-www-form-urlencoded")
    request.body = .bytes(
      ByteBuffer(
        string: Self.form([
          ("client_id", settings.clientId), ("client_secret", settings.clientSecret),
          ("code", code), ("redirect_uri", redirectURL),
          ("code_verifier", verifier(nonce: nonce)),
        ])))
    let answer = try await Self.send(request, as: TokenAnswer.self)
    guard let token = answer.access_token, !token.isEmpty else {
      throw AtelierError.unauthorized(
        "GitHub refused the login (\(answer.error ?? "no access token"))")
    }
    return token
  }

  func get<T: Decodable>(_ path: String, token: String, as type: T.Type) async throws -> T {
    var request = HTTPClientRequest(url: settings.apiURL + path)
    request.headers.add(name: "accept", value: "application/vnd.github+json")
    request.headers.add(name: "authorization", value: "Bearer \(token)")
    request.headers.add(name: "user-agent", value: "atelier")
    return try await Self.send(request, as: type)
  }

  /// One call to GitHub (10 s, 1 MiB at most); what goes wrong is a 503 that names no secret.
  static func send<T: Decodable>(_ request: HTTPClientRequest, as type: T.Type) async throws -> T {
    do {
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
      let body = try await response.body.collect(upTo: 1 << 20)
      guard response.status.code < 300 else {
        throw AtelierError(.unavailable, "GitHub answered \(response.status.code)")
      }
      return try JSONDecoder().decode(T.self, from: Data(buffer: body))
    } catch let error as AtelierError {
      throw error
    } catch {
      throw AtelierError(.unavailable, "cannot reach GitHub or read its answer")
    }
  }

  /// The user linked to a GitHub login, made a member (named after the login, or with a
  /// suffix when that name is taken) on first login.
  func linkedUser(login: String) throws -> UserRecord {
    if let user = try database.user(githubLogin: login) { return user }
    var base = String(login.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" }.prefix(28))
    if !(base.first?.isLetter ?? false) { base = "gh" + base }
    for attempt in 0..<5 {
      let name = attempt == 0 ? base : "\(base)-\(Identifier.make(length: 3))"
      let user = UserRecord(
        id: Identifier.make(), name: name, role: .member, createdAt: Date(), githubLogin: login)
      if UserInfo.isValidName(name), try database.insert(user, firstKey: nil) { return user }
    }
    throw AtelierError.conflict("cannot find a free user name for GitHub user \(login)")
  }
}
