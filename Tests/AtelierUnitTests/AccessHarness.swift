import AtelierCore
import AtelierStore
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import AtelierManager
@testable import AtelierServer

/// A manager over fake drivers with two users: the first admin (made as at first start) and a
/// member made through `POST /api/users`, each with a key.
struct AccessHarness: Sendable {
  let host: FakeHost
  let adminKey: String
  let memberKey: String
  let memberId: String

  static func bearer(_ key: String, json: Bool = false) -> HTTPFields {
    var fields: HTTPFields = [.authorization: "Bearer \(key)"]
    if json { fields[.contentType] = "application/json" }
    return fields
  }

  /// The router alone, through Hummingbird's in-process test client.
  static func withRouter(
    configure: (inout Config) -> Void = { _ in },
    _ body: @escaping @Sendable (AccessHarness, any TestClientProtocol) async throws -> Void
  ) async throws {
    let host = try FakeHost(configure: configure)
    defer { Task { await host.tearDown() } }
    let router = try await makeRouter(host)
    let app = Application(responder: router.buildResponder())
    try await app.test(.router) { client in
      try await body(try await make(host, client), client)
    }
  }

  /// A real server on a loopback port (WebSockets, streamed bodies); `body` gets its port.
  static func withLiveServer(
    configure: (inout Config) -> Void = { _ in },
    _ body: @escaping @Sendable (AccessHarness, any TestClientProtocol, Int) async throws -> Void
  ) async throws {
    let host = try FakeHost(configure: configure)
    defer { Task { await host.tearDown() } }
    let router = try await makeRouter(host)
    var logger = Logger(label: "atelier.test")
    logger.logLevel = .critical
    let app = Application(
      router: router,
      server: .http1WebSocketUpgrade(webSocketRouter: router),
      configuration: .init(address: .hostname("127.0.0.1", port: 0)), logger: logger)
    try await app.test(.live) { client in
      let port = try #require(client.port)
      try await body(try await make(host, client), client, port)
    }
  }

  static func makeRouter(_ host: FakeHost) async throws -> Router<ManagerRequestContext> {
    try ManagerServer.buildRouter(
      .init(
        config: host.config, service: host.service, database: host.database,
        drivers: await host.service.drivers, qemuPath: nil),
      logger: Logger(label: "atelier.test")
    ).0
  }

  static func make(_ host: FakeHost, _ client: any TestClientProtocol) async throws
    -> AccessHarness
  {
    let adminKey = try #require(
      try AdminToken.ensure(database: host.database, path: host.config.adminTokenPath))
    let created = try await client.execute(
      uri: "/api/users", method: .post, headers: bearer(adminKey, json: true),
      body: ByteBuffer(string: #"{"name": "mia"}"#))
    #expect(created.status == .created)
    let json = try JSONValue.parse(created.body)
    return AccessHarness(
      host: host, adminKey: adminKey,
      memberKey: try #require(json["apiKey"]?.stringValue),
      memberId: try #require(json["user"]?["id"]?.stringValue))
  }

  /// A new running sandbox of the key's owner.
  func createSandbox(_ key: String, _ client: any TestClientProtocol) async throws -> String {
    let response = try await client.execute(
      uri: "/api/sandboxes", method: .post, headers: Self.bearer(key, json: true),
      body: ByteBuffer(string: "{}"))
    #expect(response.status == .created)
    return try #require(try JSONValue.parse(response.body)["id"]?.stringValue)
  }
}

extension JSONValue {
  static func parse(_ buffer: ByteBuffer) throws -> JSONValue {
    try JSONDecoder().decode(JSONValue.self, from: Data(buffer: buffer))
  }
}

extension JSONValue {
  var stringValue: String? {
    if case .string(let value) = self { return value }
    return nil
  }

  var arrayValue: [JSONValue]? {
    if case .array(let value) = self { return value }
    return nil
  }
}
