import AtelierCore
import AtelierStore
import Crypto
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import AtelierServer

/// Browser sessions: a key traded for a signed, expiring, revocable cookie whose writes need
/// the session's CSRF token.
@Suite struct SessionTests {
  typealias Harness = AccessHarness

  struct Session {
    let cookie: String
    let csrf: String
    var headers: HTTPFields { [.cookie: "\(SessionSigner.cookieName)=\(cookie)"] }
    var writeHeaders: HTTPFields {
      var fields = headers
      fields[.contentType] = "application/json"
      fields[.init(SessionSigner.csrfHeader)!] = csrf
      return fields
    }
  }

  static func startSession(_ key: String, _ client: any TestClientProtocol) async throws
    -> Session
  {
    let response = try await client.execute(
      uri: "/auth/session", method: .post, headers: [.contentType: "application/json"],
      body: ByteBuffer(string: #"{"token": "\#(key)"}"#))
    #expect(response.status == .ok)
    let setCookie = try #require(response.headers[.setCookie])
    #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Lax"))
    #expect(!String(buffer: response.body).contains(key))
    let value = try #require(
      setCookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last)
    let csrf = try #require(try JSONValue.parse(response.body)["csrfToken"]?.stringValue)
    return Session(cookie: String(value), csrf: csrf)
  }

  @Test func aSessionCookieWorksAndWritesNeedItsCSRFToken() async throws {
    try await Harness.withRouter { setup, client in
      let session = try await Self.startSession(setup.memberKey, client)
      try await client.execute(uri: "/auth/me", method: .get, headers: session.headers) {
        let me = try JSONValue.parse($0.body)
        #expect(me["authenticatedBy"] == "session" && me["user"]?["name"] == "mia")
        #expect(me["csrfToken"]?.stringValue == session.csrf)
      }
      try await client.execute(uri: "/api/sandboxes", method: .get, headers: session.headers) {
        #expect($0.status == .ok)
      }
      // A write without the CSRF token, or with another session's, is refused.
      let other = try await Self.startSession(setup.adminKey, client)
      var wrong = session.writeHeaders
      wrong[.init(SessionSigner.csrfHeader)!] = other.csrf
      var missing = session.headers
      missing[.contentType] = "application/json"
      for headers in [missing, wrong] {
        try await client.execute(
          uri: "/api/sandboxes", method: .post, headers: headers, body: ByteBuffer(string: "{}")
        ) {
          #expect($0.status == .forbidden)
          #expect(String(buffer: $0.body).contains("CSRF"))
        }
      }
      // The positive control: with it, the write is done, as this session's user.
      let created = try await client.execute(
        uri: "/api/sandboxes", method: .post, headers: session.writeHeaders,
        body: ByteBuffer(string: "{}"))
      #expect(created.status == .created)
      #expect(try JSONValue.parse(created.body)["ownerId"]?.stringValue == setup.memberId)
    }
  }

  @Test func forgedExpiredAndRevokedCookiesAre401() async throws {
    try await Harness.withRouter { setup, client in
      let session = try await Self.startSession(setup.memberKey, client)
      let parts = session.cookie.split(separator: ".").map(String.init)
      #expect(parts.count == 3)
      let signer = try SessionSigner.load(path: setup.host.config.sessionKeyPath)
      let stranger = SessionSigner(key: .init(size: .bits256))
      let later = Date().addingTimeInterval(3600)
      let forged = [
        // Another expiry under the same MAC; another session id; a MAC of another key.
        "\(parts[0]).\(Int(later.timeIntervalSince1970) + 999).\(parts[2])",
        "zzzzzzzzzzzz.\(parts[1]).\(parts[2])",
        stranger.cookieValue(sessionId: parts[0], expiresAt: later),
        // Signed by the manager's own key but past its expiry.
        signer.cookieValue(sessionId: parts[0], expiresAt: Date().addingTimeInterval(-1)),
        "garbage", "",
      ]
      for cookie in forged {
        try await client.execute(
          uri: "/api/sandboxes", method: .get,
          headers: [.cookie: "\(SessionSigner.cookieName)=\(cookie)"]
        ) { #expect($0.status == .unauthorized, "\(cookie)") }
      }
      // The positive control: the manager's signature over a live session with a new expiry
      // is accepted (the MAC, not the string, is what counts).
      let resigned = signer.cookieValue(sessionId: parts[0], expiresAt: later)
      try await client.execute(
        uri: "/api/sandboxes", method: .get,
        headers: [.cookie: "\(SessionSigner.cookieName)=\(resigned)"]
      ) { #expect($0.status == .ok) }
      // Logging out revokes it: the same cookie no longer works, though its MAC still holds.
      var logout = session.writeHeaders
      logout[.contentType] = nil
      try await client.execute(uri: "/auth/logout", method: .post, headers: logout) {
        #expect($0.status == .noContent)
        #expect($0.headers[.setCookie]?.contains("Max-Age=0") == true)
      }
      try await client.execute(uri: "/api/sandboxes", method: .get, headers: session.headers) {
        #expect($0.status == .unauthorized)
      }
      // A key that does not exist gets no session.
      try await client.execute(
        uri: "/auth/session", method: .post, headers: [.contentType: "application/json"],
        body: ByteBuffer(string: #"{"token": "atl_wrong"}"#)
      ) { #expect($0.status == .unauthorized) }
    }
  }

  /// A cookie on a WebSocket upgrade counts only from the manager's own origin (or with no
  /// Origin at all: not a browser); a key does from anywhere.
  @Test func cookieUpgradesMustComeFromTheManagersOrigin() async throws {
    try await Harness.withRouter { setup, client in
      let session = try await Self.startSession(setup.memberKey, client)
      let authenticator = Authenticator(
        database: setup.host.database,
        signer: try SessionSigner.load(path: setup.host.config.sessionKeyPath))
      func upgrade(origin: String?, _ credentials: HTTPFields) -> Request {
        var head = HTTPRequest(
          method: .get, scheme: nil, authority: "127.0.0.1:4000", path: "/api/x/exec/stream")
        head.headerFields = credentials
        head.headerFields[.upgrade] = "websocket"
        head.headerFields[.connection] = "Upgrade"
        if let origin { head.headerFields[.origin] = origin }
        return Request(head: head, body: .init(buffer: ByteBuffer()))
      }
      for origin in ["https://evil.example", "http://127.0.0.1:4001", "http://127.0.0.1"] {
        let error = #expect(throws: AtelierError.self) {
          try authenticator.authenticate(upgrade(origin: origin, session.headers))
        }
        #expect(error?.code == .forbidden, "\(origin)")
        // The same origin with a key is fine: a page elsewhere has no key to send.
        let keyed = upgrade(origin: origin, Harness.bearer(setup.memberKey))
        #expect(try authenticator.authenticate(keyed).userId == setup.memberId)
      }
      for origin in ["http://127.0.0.1:4000", "https://127.0.0.1:4000", nil] {
        let principal = try authenticator.authenticate(upgrade(origin: origin, session.headers))
        #expect(principal.userId == setup.memberId, "\(origin ?? "no origin")")
      }
    }
  }
}
