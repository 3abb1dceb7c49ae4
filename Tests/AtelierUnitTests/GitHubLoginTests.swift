import AsyncHTTPClient
import AtelierCore
import Crypto
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Synchronization
import Testing

@testable import AtelierServer

/// A stand-in for GitHub's OAuth and API endpoints on a loopback port: it checks the client's
/// secret, the PKCE verifier against the challenge it was given, single-use codes, and says who
/// logged in (`login`) and in which organizations.
final class StandInGitHub: Sendable {
  let login = Mutex("octo-cat")
  let orgs: [String: [String]] = ["orgie": ["atelier-dev"], "mallory": ["elsewhere"]]
  private let codes = Mutex<[String: (challenge: String, redirect: String)]>([:])
  private let server = Mutex<Task<Void, any Error>?>(nil)
  let exchanges = Mutex(0)
  static let clientId = "client-1"
  static let clientSecret = "secret-1"

  func start() async throws -> Int {
    let router = Router()
    router.get("/login/oauth/authorize") { [self] request, _ in
      let query = request.uri.queryParameters
      guard query.get("client_id") == Self.clientId, query.get("code_challenge_method") == "S256",
        let challenge = query.get("code_challenge"), let redirect = query.get("redirect_uri"),
        let state = query.get("state")
      else { return Response(status: .badRequest) }
      let code = UUID().uuidString
      codes.withLock { $0[code] = (challenge, redirect) }
      var response = Response(status: .found)
      response.headers[.location] =
        "\(redirect)?" + GitHubLogin.form([("code", code), ("state", state)])
      return response
    }
    router.post("/login/oauth/access_token") { [self] request, _ in
      let form = Self.parseForm(String(buffer: try await request.body.collect(upTo: 1 << 16)))
      exchanges.withLock { $0 += 1 }
      let entry = codes.withLock { $0.removeValue(forKey: form["code"] ?? "") }
      guard form["client_id"] == Self.clientId, form["client_secret"] == Self.clientSecret,
        let entry, entry.redirect == form["redirect_uri"],
        let verifier = form["code_verifier"], GitHubLogin.challenge(verifier) == entry.challenge
      else { return Self.json(#"{"error": "bad_verification_code"}"#) }
      return Self.json(#"{"access_token": "gho_\#(UUID().uuidString)", "token_type": "bearer"}"#)
    }
    router.get("/user") { [self] request, _ in
      guard request.headers[.authorization]?.hasPrefix("Bearer gho_") == true else {
        return Response(status: .unauthorized)
      }
      return Self.json(#"{"login": "\#(login.withLock { $0 })", "id": 1}"#)
    }
    router.get("/user/orgs") { [self] _, _ in
      let names = orgs[login.withLock { $0 }] ?? []
      return Self.json("[" + names.map { #"{"login": "\#($0)"}"# }.joined(separator: ",") + "]")
    }
    let (started, continuation) = AsyncStream.makeStream(of: Int.self)
    let app = Application(
      router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
      onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: FakeAgent.quiet)
    server.withLock { $0 = Task { try await app.runService(gracefulShutdownSignals: []) } }
    for await port in started { return port }
    return 0
  }

  func stop() {
    server.withLock { $0?.cancel() }
  }

  static func json(_ text: String) -> Response {
    Response(
      status: .ok, headers: [.contentType: "application/json"],
      body: .init(byteBuffer: ByteBuffer(string: text)))
  }

  static func parseForm(_ text: String) -> [String: String] {
    var result: [String: String] = [:]
    for pair in text.split(separator: "&") {
      let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
      guard parts.count == 2 else { continue }
      result[parts[0]] = parts[1].removingPercentEncoding
    }
    return result
  }
}

@Suite struct GitHubLoginTests {
  typealias Harness = AccessHarness

  struct Flow {
    let client: any TestClientProtocol
    let http: HTTPClient

    /// Starts a login at the manager and lets the stand-in approve it: the callback's query
    /// and the state cookie.
    func approve() async throws -> (callback: String, cookie: String) {
      let start = try await client.execute(uri: "/auth/github", method: .get)
      #expect(start.status == .found)
      let location = try #require(start.headers[.location])
      #expect(location.contains("code_challenge_method=S256") && location.contains("state="))
      let setCookie = try #require(start.headers[.setCookie])
      #expect(setCookie.hasPrefix("\(GitHubLogin.stateCookie)=") && setCookie.contains("HttpOnly"))
      let cookie = String(setCookie.split(separator: ";")[0])
      let approval = try await http.execute(HTTPClientRequest(url: location), timeout: .seconds(5))
      #expect(approval.status.code == 302)
      let back = try #require(approval.headers.first(name: "location"))
      let query = try #require(back.split(separator: "?", maxSplits: 1).last)
      return ("/auth/github/callback?\(query)", cookie)
    }
  }

  static func withGitHub(
    _ body: @escaping @Sendable (AccessHarness, Flow, StandInGitHub) async throws -> Void
  ) async throws {
    let github = StandInGitHub()
    let port = try await github.start()
    defer { github.stop() }
    let http = HTTPClient(
      eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))
    defer { _ = http.shutdown() }
    try await Harness.withRouter(configure: { config in
      config.github.clientId = StandInGitHub.clientId
      config.github.clientSecret = StandInGitHub.clientSecret
      config.github.allowedUsers = ["octo-cat"]
      config.github.allowedOrgs = ["atelier-dev"]
      config.github.authorizeURL = "http://127.0.0.1:\(port)/login/oauth/authorize"
      config.github.tokenURL = "http://127.0.0.1:\(port)/login/oauth/access_token"
      config.github.apiURL = "http://127.0.0.1:\(port)"
    }) { setup, client in
      try await body(setup, Flow(client: client, http: http), github)
    }
  }

  @Test func anAllowedUserGetsASessionAndOneUser() async throws {
    try await Self.withGitHub { setup, flow, _ in
      var ids: [String] = []
      for _ in 0..<2 {
        let (callback, cookie) = try await flow.approve()
        let done = try await flow.client.execute(
          uri: callback, method: .get, headers: [.cookie: cookie])
        #expect(done.status == .ok, "\(String(buffer: done.body))")
        let session = try #require(
          done.headers[values: .setCookie].first {
            $0.hasPrefix("\(SessionSigner.cookieName)=")
          })
        let me = try await flow.client.execute(
          uri: "/auth/me", method: .get,
          headers: [.cookie: String(session.split(separator: ";")[0])])
        let user = try JSONValue.parse(me.body)["user"]
        #expect(user?["name"] == "octo-cat" && user?["role"] == "member")
        #expect(user?["githubLogin"] == "octo-cat")
        ids.append(try #require(user?["id"]?.stringValue))
      }
      // The second login is the same user.
      #expect(ids[0] == ids[1])
      #expect(try setup.host.database.users().count == 3)
    }
  }

  @Test func aWrongStateIsRefusedBeforeGitHubIsAsked() async throws {
    try await Self.withGitHub { _, flow, github in
      let (callback, cookie) = try await flow.approve()
      let (other, otherCookie) = try await flow.approve()
      _ = other
      let state = try #require(
        callback.split(separator: "state=").last.map { String($0).removingPercentEncoding ?? "" })
      let parts = state.split(separator: ".").map(String.init)
      let code = try #require(callback.split(separator: "code=").last?.split(separator: "&").first)
      let base = "/auth/github/callback?code=\(code)&state="
      let attempts: [(String, HTTPFields)] = [
        // Tampered: another nonce, another expiry, no MAC; no cookie; another login's cookie.
        (base + "zz\(parts[0].dropFirst(2)).\(parts[1]).\(parts[2])", [.cookie: cookie]),
        (base + "\(parts[0]).\(Int(parts[1])! + 60).\(parts[2])", [.cookie: cookie]),
        (base + "\(parts[0]).\(parts[1])", [.cookie: cookie]),
        (base + GitHubLogin.form([("s", state)]).dropFirst(2), [:]),
        (base + GitHubLogin.form([("s", state)]).dropFirst(2), [.cookie: otherCookie]),
      ]
      for (uri, headers) in attempts {
        try await flow.client.execute(uri: uri, method: .get, headers: headers) {
          #expect($0.status == .unauthorized, "\(uri) \(headers)")
        }
      }
      #expect(github.exchanges.withLock { $0 } == 0, "no code was traded")
      // The positive control: the real state with its cookie logs in.
      try await flow.client.execute(uri: callback, method: .get, headers: [.cookie: cookie]) {
        #expect($0.status == .ok)
      }
    }
  }

  @Test func onlyAllowedUsersAndOrganizationsGetIn() async throws {
    try await Self.withGitHub { setup, flow, github in
      github.login.withLock { $0 = "mallory" }
      let (callback, cookie) = try await flow.approve()
      try await flow.client.execute(uri: callback, method: .get, headers: [.cookie: cookie]) {
        #expect($0.status == .forbidden)
      }
      #expect(try setup.host.database.user(githubLogin: "mallory") == nil)
      // A member of an allowed organization gets in.
      github.login.withLock { $0 = "orgie" }
      let (allowed, allowedCookie) = try await flow.approve()
      try await flow.client.execute(uri: allowed, method: .get, headers: [.cookie: allowedCookie]) {
        #expect($0.status == .ok)
      }
      #expect(try setup.host.database.user(githubLogin: "orgie")?.role == .member)
    }
  }

  @Test func settingsComeFromTheEnvironmentAndNeedAnAllowList() async throws {
    let config = try Config.load(environment: [
      "HOME": "/tmp", "ATELIER_GITHUB_CLIENT_ID": "id", "ATELIER_GITHUB_CLIENT_SECRET": "s",
      "ATELIER_GITHUB_ALLOWED_USERS": "Octo-Cat, hubot", "ATELIER_GITHUB_ALLOWED_ORGS": "acme",
      "ATELIER_GITHUB_API_URL": "http://127.0.0.1:9/",
    ])
    #expect(config.github.isEnabled && config.github.allowedUsers == ["octo-cat", "hubot"])
    #expect(config.github.allowedOrgs == ["acme"] && config.github.apiURL == "http://127.0.0.1:9")
    #expect(config.github.tokenURL == "https://github.com/login/oauth/access_token")
    #expect(throws: ConfigError.self) {
      _ = try Config.load(environment: ["ATELIER_GITHUB_TOKEN_URL": "ftp://x"])
    }
    // Enabled with nobody allowed: the manager does not start; with a list it does.
    let host = try FakeHost(configure: {
      $0.github.clientId = "id"
      $0.github.clientSecret = "s"
    })
    defer { Task { await host.tearDown() } }
    await #expect(throws: ConfigError.self) { _ = try await Harness.makeRouter(host) }
    let allowed = try FakeHost(configure: {
      $0.github.clientId = "id"
      $0.github.clientSecret = "s"
      $0.github.allowedOrgs = ["acme"]
    })
    defer { Task { await allowed.tearDown() } }
    _ = try await Harness.makeRouter(allowed)
  }
}
