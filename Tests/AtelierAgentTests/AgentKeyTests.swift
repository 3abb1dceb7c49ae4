import AtelierAgentAPI
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import HummingbirdWSClient
import Logging
import NIOCore
import Testing

@testable import AtelierAgent

/// An agent on the host, as the tests drive it: its own state folder, a fixed key.
struct TestAgent {
  static let key = String(repeating: "ab", count: 32)
  let routes: AgentRoutes
  let state: String

  init(key: String? = TestAgent.key, listen: String = GuestServices.guestAddress) {
    state = "/tmp/atl-agent-state-\(UInt32.random(in: 0...UInt32.max))"
    let logger = Logger(label: "test.agent")
    routes = AgentRoutes(
      identity: AgentIdentity(sandboxId: "sbxtest", hostname: "sbx-test"),
      keys: AgentKeyStore(key: key),
      supervisor: ServiceSupervisor(stateDirectory: state, logger: logger),
      terminals: TerminalService(logger: logger),
      guestServices: GuestServiceHub(logger: logger, listenAddress: listen),
      logger: logger)
  }

  var app: some ApplicationProtocol {
    AgentMain.makeApplication(routes: routes, host: "127.0.0.1", port: 0, logger: routes.logger)
  }

  func cleanUp() { try? FileManager.default.removeItem(atPath: state) }

  static func bearer(_ key: String = TestAgent.key) -> HTTPFields {
    [.authorization: "Bearer \(key)"]
  }
}

extension TestResponse {
  var text: String { String(buffer: body) }
  var json: [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
  }
}

@Suite struct AgentKeyTests {
  @Test func everyRouteNeedsTheKeyAndHealthSaysNothingWithout() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.router) { client in
      // Every operation of the table, its parameters filled, without and with a wrong key.
      for operation in AgentOperations.all where operation.requiresKey {
        let path = operation.concretePath(["name": "web", "sid": "t1"])
        for headers: HTTPFields in [[:], TestAgent.bearer(String(repeating: "0", count: 64))] {
          let method = HTTPRequest.Method(rawValue: operation.method.rawValue)!
          try await client.execute(uri: path, method: method, headers: headers) { response in
            #expect(response.status == .unauthorized, "\(operation.id) \(headers)")
            #expect(response.json["error"] as? String == "UNAUTHORIZED")
            #expect((response.json["message"] as? String)?.isEmpty == false)
          }
        }
      }
      // Unknown paths too: nothing is told before the key.
      try await client.execute(uri: "/no/such/route", method: .get) { response in
        #expect(response.status == .unauthorized)
      }
      try await client.execute(uri: "/no/such/route", method: .get, headers: TestAgent.bearer()) {
        #expect($0.status == .notFound)
      }
      // Not a bearer header, or the key with something after it.
      for header in ["Basic \(TestAgent.key)", "Bearer \(TestAgent.key)x", TestAgent.key] {
        try await client.execute(
          uri: "/services", method: .get, headers: [.authorization: header]
        ) { #expect($0.status == .unauthorized, "\(header)") }
      }

      try await client.execute(uri: "/health", method: .get) { response in
        #expect(response.status == .ok)
        #expect(response.json.keys.sorted() == ["status"])
        #expect(response.json["status"] as? String == "ok")
        #expect(!response.text.contains("sbxtest"))
      }
      // Positive controls: the key opens everything, and health says who it is.
      try await client.execute(uri: "/health", method: .get, headers: TestAgent.bearer()) {
        let health = try JSONDecoder().decode(AgentHealth.self, from: Data($0.text.utf8))
        #expect(health.sandboxId == "sbxtest")
      }
      try await client.execute(uri: "/services", method: .get, headers: TestAgent.bearer()) {
        #expect($0.status == .ok)
        #expect($0.text == "[]")
      }
    }
  }

  @Test func withoutAKeyDriveNothingIsServed() async throws {
    let agent = TestAgent(key: nil)
    defer { agent.cleanUp() }
    try await agent.app.test(.router) { client in
      try await client.execute(uri: "/services", method: .get, headers: TestAgent.bearer()) {
        #expect($0.status == .unauthorized)
      }
      try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
    }
  }

  @Test func resumeReplacesTheKey() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    let newKey = AgentKey.generate()
    try await agent.app.test(.router) { client in
      let body = try JSONEncoder().encode(GuestResumeRequest(unixTimeNanos: 0, agentKey: "nothex"))
      try await client.execute(
        uri: "/system/resume", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: body)
      ) { #expect($0.status == .badRequest) }
      try await client.execute(uri: "/services", method: .get, headers: TestAgent.bearer()) {
        #expect($0.status == .ok, "a refused new key leaves the old one")
      }
      let good = try JSONEncoder().encode(GuestResumeRequest(unixTimeNanos: 0, agentKey: newKey))
      try await client.execute(
        uri: "/system/resume", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: good)
      ) { #expect($0.status == .ok) }
      try await client.execute(uri: "/services", method: .get, headers: TestAgent.bearer()) {
        #expect($0.status == .unauthorized, "the old key no longer opens it")
      }
      try await client.execute(
        uri: "/services", method: .get, headers: TestAgent.bearer(newKey)
      ) { #expect($0.status == .ok) }
    }
  }

  @Test func webSocketUpgradesNeedTheKey() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.live) { client in
      let port = try #require(client.port)
      let url = "ws://127.0.0.1:\(port)/exec/stream"
      await #expect(throws: (any Error).self) {
        _ = try await WebSocketClient.connect(url: url, logger: Logger(label: "test")) { _, _, _ in
          Issue.record("upgraded without a key")
        }
      }
      // Positive control: with the key the stream runs a command.
      let output = OutputBox()
      var configuration = WebSocketClientConfiguration()
      configuration.additionalHeaders = TestAgent.bearer()
      _ = try await WebSocketClient.connect(
        url: url, configuration: configuration, logger: Logger(label: "test")
      ) { inbound, outbound, _ in
        try await outbound.write(.text(#"{"argv":["/bin/echo","streamed"]}"#))
        for try await message in inbound.messages(maxSize: 1 << 20) {
          if case .text(let text) = message { output.append(text) }
        }
      }
      #expect(output.text.contains("streamed"))
    }
  }

  @Test func constantTimeComparisonAgreesWithEquality() {
    let key = Array(TestAgent.key.utf8)
    #expect(AgentKey.matches(key, key))
    #expect(!AgentKey.matches(Array(key.dropLast()), key))
    #expect(!AgentKey.matches(Array(key.dropLast()) + [UInt8(ascii: "c")], key))
    #expect(!AgentKey.matches([UInt8](), [UInt8]()))
    let drive = AgentKeyDrive.contents(key: TestAgent.key)
    #expect(drive.count == 4096)
    #expect(AgentKeyDrive.key(in: drive) == TestAgent.key)
    #expect(AgentKeyDrive.key(in: [UInt8](repeating: 0, count: 4096)) == nil)
    #expect(AgentKey.isValid(AgentKey.generate()))
    #expect(AgentKey.generate() != AgentKey.generate())
  }
}

final class OutputBox: @unchecked Sendable {
  private let lock = NSLock()
  private var value = ""
  func append(_ text: String) { lock.withLock { value += text } }
  var text: String { lock.withLock { value } }
}
