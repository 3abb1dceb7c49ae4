import AsyncHTTPClient
import AtelierCore
import Foundation
import Hummingbird
import HummingbirdTesting
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization
import Testing

@testable import AtelierServer

/// What needs a real server on a loopback port: WebSocket close codes and the event stream.
@Suite struct LiveAccessTests {
  typealias Harness = AccessHarness

  /// The close code (nil: closed without one) and the text frames a WebSocket got; `send` is
  /// written first.
  static func connect(
    _ url: String, headers: HTTPFields = [:], send: String? = nil
  ) async throws -> (code: Int?, texts: [String]) {
    let texts = Mutex<[String]>([])
    var configuration = WebSocketClientConfiguration()
    configuration.additionalHeaders = headers
    var logger = Logger(label: "test.ws")
    logger.logLevel = .critical
    let frame = try await WebSocketClient.connect(
      url: url, configuration: configuration, logger: logger
    ) { inbound, outbound, _ in
      if let send { try await outbound.write(.text(send)) }
      for try await message in inbound.messages(maxSize: 1 << 20) {
        guard case .text(let text) = message else { continue }
        texts.withLock { $0.append(text) }
        // The stream is live: the client ends it.
        if text.contains("echo-me") { try await outbound.close(.normalClosure, reason: nil) }
      }
    }
    let code = frame.map { Int(UInt16(webSocketErrorCode: $0.closeCode)) }
    return (code, texts.withLock { $0 })
  }

  @Test func webSocketsCloseWithCodesThatSayWhy() async throws {
    try await Harness.withLiveServer { setup, client, port in
      let admins = try await setup.createSandbox(setup.adminKey, client)
      let members = try await setup.createSandbox(setup.memberKey, client)
      let stopped = try await setup.createSandbox(setup.memberKey, client)
      let stop = try await client.execute(
        uri: "/api/sandboxes/\(stopped)/stop", method: .post,
        headers: Harness.bearer(setup.memberKey))
      #expect(stop.status == .ok)
      func url(_ id: String, key: String? = nil) -> String {
        "ws://127.0.0.1:\(port)/api/sandboxes/\(id)/exec/stream"
          + (key.map { "?token=\($0)" } ?? "")
      }
      let member = Harness.bearer(setup.memberKey)
      let cases: [(String, String, HTTPFields, Int)] = [
        ("no credentials", url(members), [:], 4001),
        ("a wrong key", url(members, key: "atl_wrong"), [:], 4001),
        ("a wrong header", url(members), [.authorization: "Bearer atl_wrong"], 4001),
        ("another user's sandbox", url(admins), member, 4003),
        ("another user's sandbox, key in the query", url(admins, key: setup.memberKey), [:], 4003),
        ("no such sandbox", url("zzzzzzzzzzzz"), member, 4004),
        ("a stopped sandbox", url(stopped), member, 4004),
      ]
      for (name, url, headers, code) in cases {
        let result = try await Self.connect(url, headers: headers, send: #"{"command":"true"}"#)
        #expect(result.code == code, "\(name)")
        #expect(result.texts.isEmpty, "\(name): nothing reaches the agent")
      }
      // The positive controls: the owner (key in the header or the query) and an admin reach
      // the agent's stream, which answers and echoes until the client closes (1000).
      let controls: [(String, HTTPFields, String?)] = [
        (members, member, nil), (members, [:], setup.memberKey),
        (members, Harness.bearer(setup.adminKey), nil),
        (admins, Harness.bearer(setup.adminKey), nil),
      ]
      for (id, headers, key) in controls {
        let result = try await Self.connect(url(id, key: key), headers: headers, send: "echo-me")
        #expect(result.texts.first?.contains("started") == true, "\(id) \(headers)")
        #expect(result.texts.contains("echo-me"))
        #expect(result.code == 1000)
      }
    }
  }

  /// Browsers send cookies with a WebSocket upgrade from any page; this client sends the
  /// origin `ws://127.0.0.1` (no port: another origin than the manager's), so a cookie is
  /// refused with 4003 where a key is not (`SessionTests` has the same-origin control).
  @Test func sessionCookiesFromAnotherOriginCannotOpenWebSockets() async throws {
    try await Harness.withLiveServer { setup, client, port in
      let members = try await setup.createSandbox(setup.memberKey, client)
      let session = try await SessionTests.startSession(setup.memberKey, client)
      let url = "ws://127.0.0.1:\(port)/api/sandboxes/\(members)/exec/stream"
      let refused = try await Self.connect(url, headers: session.headers, send: "echo-me")
      #expect(refused.code == 4003 && refused.texts.isEmpty)
      let served = try await Self.connect(
        url, headers: Harness.bearer(setup.memberKey), send: "echo-me")
      #expect(served.code == 1000 && served.texts.contains("echo-me"))
    }
  }

  /// A subscriber sees the events of what it may see: a member its own sandboxes', an admin
  /// everyone's.
  @Test func eventsAreFilteredByOwner() async throws {
    // A short heartbeat: the server notices a reader that left at its next write.
    try await Harness.withLiveServer(configure: { $0.eventsHeartbeatSeconds = 1 }) {
      setup, client, port in
      let admins = try await setup.createSandbox(setup.adminKey, client)
      let members = try await setup.createSandbox(setup.memberKey, client)
      // Replayed from the buffer (Last-Event-ID 0): the admin's create came first, so a
      // member's stream that has reached the member's event has passed where the admin's
      // would be.
      let memberSeen = try await Self.readEvents(port: port, key: setup.memberKey, until: members)
      #expect(memberSeen.contains(members) && !memberSeen.contains(admins))
      let adminSeen = try await Self.readEvents(port: port, key: setup.adminKey, until: members)
      #expect(adminSeen.contains(admins) && adminSeen.contains(members))
    }
  }

  /// The event stream's text up to the first mention of `marker` (at most 10 s).
  static func readEvents(port: Int, key: String, until marker: String) async throws -> String {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/api/events")
    request.headers.add(name: "authorization", value: "Bearer \(key)")
    request.headers.add(name: "last-event-id", value: "0")
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
    #expect(response.status == .ok)
    var text = ""
    for try await buffer in response.body {
      text += String(buffer: buffer)
      if text.contains(marker) { break }
    }
    return text
  }
}
