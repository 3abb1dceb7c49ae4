import AtelierCore
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import AtelierE2B
@testable import AtelierManager
@testable import AtelierServer

/// The E2B adapter's control plane and envd gate through the manager's router, over fake
/// drivers; and its wire formats (Connect envelopes, multipart, listings) on their own.
@Suite struct E2BTests {
  func withServer(
    maxSandboxes: Int = 20,
    _ body: @escaping @Sendable (String, FakeHost, any TestClientProtocol) async throws -> Void
  ) async throws {
    let host = try FakeHost(maxSandboxes: maxSandboxes)
    defer { Task { await host.tearDown() } }
    let token = try #require(
      try AdminToken.ensure(database: host.database, path: "\(host.config.dataDir)/admin-token"))
    let (router, _) = try ManagerServer.buildRouter(
      .init(
        config: host.config, service: host.service, database: host.database,
        drivers: await host.service.drivers, qemuPath: nil),
      logger: Logger(label: "atelier.test"))
    let app = Application(responder: router.buildResponder())
    try await app.test(.router) { client in try await body(token, host, client) }
  }

  static func json(_ buffer: ByteBuffer) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(buffer.readableBytesView)) as? [String: Any])
      ?? [:]
  }

  static let createBody = ByteBuffer(
    string: #"{"templateID":"base","timeout":120,"metadata":{"k":"v"}}"#)

  @Test func theControlPlaneCreatesListsAndKills() async throws {
    try await withServer { token, _, client in
      let key: HTTPFields = [HTTPField.Name("X-API-KEY")!: token]
      let id = try await client.execute(
        uri: "/v2/sandboxes", method: .post, headers: key, body: Self.createBody
      ) { response in
        #expect(response.status == .created)
        let body = Self.json(response.body)
        #expect(body["envdVersion"] as? String == SandboxViews.envdVersion)
        #expect((body["envdAccessToken"] as? String)?.count == 64)
        return try #require(body["sandboxID"] as? String)
      }
      try await client.execute(uri: "/sandboxes/\(id)", method: .get, headers: key) { response in
        #expect(response.status == .ok)
        let body = Self.json(response.body)
        #expect(body["state"] as? String == "running")
        #expect(body["metadata"] as? [String: String] == ["k": "v"])
        #expect(body["templateID"] as? String == "base")
      }
      try await client.execute(
        uri: "/v2/sandboxes?metadata=k%3Dv&state=running", method: .get, headers: key
      ) { response in
        let items =
          (try? JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)))
          as? [[String: Any]]
        #expect(items?.compactMap { $0["sandboxID"] as? String } == [id])
      }
      try await client.execute(
        uri: "/v2/sandboxes?metadata=k%3Dother", method: .get, headers: key
      ) { response in
        #expect(String(buffer: response.body) == "[]")
      }
      try await client.execute(
        uri: "/sandboxes/\(id)/timeout", method: .post, headers: key,
        body: ByteBuffer(string: #"{"timeout":600}"#)
      ) { response in #expect(response.status == .noContent) }
      try await client.execute(uri: "/sandboxes/\(id)", method: .delete, headers: key) {
        response in #expect(response.status == .noContent)
      }
      // Gone: E2B's 404 with its own error body.
      try await client.execute(uri: "/sandboxes/\(id)", method: .get, headers: key) { response in
        #expect(response.status == .notFound)
        #expect(Self.json(response.body)["code"] as? Int == 404)
      }
      try await client.execute(uri: "/sandboxes/\(id)", method: .delete, headers: key) {
        response in #expect(response.status == .notFound)
      }
    }
  }

  @Test func theControlPlaneWantsTheKey() async throws {
    try await withServer { token, _, client in
      // Positive control: the right key lists.
      try await client.execute(
        uri: "/v2/sandboxes", method: .get, headers: [HTTPField.Name("X-API-KEY")!: token]
      ) { response in #expect(response.status == .ok) }
      for headers: HTTPFields in [
        [:], [HTTPField.Name("X-API-KEY")!: "atl_wrong"], [.authorization: "Bearer \(token)"],
      ] {
        try await client.execute(uri: "/v2/sandboxes", method: .get, headers: headers) {
          response in
          #expect(response.status == .unauthorized)
          #expect(Self.json(response.body)["code"] as? Int == 401)
        }
      }
    }
  }

  @Test func overTheLimitIsA429ThatSaysDoNotRetry() async throws {
    try await withServer(maxSandboxes: 1) { token, host, client in
      let key: HTTPFields = [HTTPField.Name("X-API-KEY")!: token]
      try await client.execute(
        uri: "/v2/sandboxes", method: .post, headers: key, body: Self.createBody
      ) { response in #expect(response.status == .created) }
      try await client.execute(
        uri: "/v2/sandboxes", method: .post, headers: key, body: Self.createBody
      ) { response in
        #expect(response.status == .tooManyRequests)
        #expect(response.headers[HTTPField.Name("Should-Retry")!] == "false")
        #expect(Self.json(response.body)["code"] as? Int == 429)
      }
      #expect(try await host.service.list(status: nil).count == 1)
    }
  }

  @Test func envdRequestsNeedTheSandboxAndItsToken() async throws {
    try await withServer { token, _, client in
      let key: HTTPFields = [HTTPField.Name("X-API-KEY")!: token]
      let (id, access) = try await client.execute(
        uri: "/v2/sandboxes", method: .post, headers: key, body: Self.createBody
      ) { response in
        let body = Self.json(response.body)
        return (
          try #require(body["sandboxID"] as? String),
          try #require(body["envdAccessToken"] as? String)
        )
      }
      func health(_ sandbox: String, _ token: String?) async throws -> HTTPResponse.Status {
        var headers: HTTPFields = [HTTPField.Name("E2b-Sandbox-Id")!: sandbox]
        if let token { headers[HTTPField.Name("X-Access-Token")!] = token }
        return try await client.execute(uri: "/health", method: .get, headers: headers) {
          $0.status
        }
      }
      // Positive control: the sandbox's own token.
      #expect(try await health(id, access) == .noContent)
      #expect(try await health(id, nil) == .unauthorized)
      let wrong = (access.first == "0" ? "1" : "0") + access.dropFirst()
      #expect(try await health(id, wrong) == .unauthorized)
      #expect(try await health("zzzzzzzzzzzz", access) == .badGateway)
      // Without the header, /health is the manager's own.
      try await client.execute(uri: "/health", method: .get) { #expect($0.status == .ok) }
    }
  }

  /// E2B's `timeout` is a lifetime: at its end the sandbox goes (or pauses), busy or not.
  @Test func aLifetimeEndsTheSandbox() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let service = host.service
    let doomed = try await service.create(CreateSandboxRequest(lifetimeSeconds: 60))
    let paused = try await service.create(
      CreateSandboxRequest(lifetimeSeconds: 60, onExpiry: .pause))
    let forever = try await service.create(CreateSandboxRequest())
    #expect(doomed.expiresAt != nil && doomed.onExpiry == .delete)
    #expect(forever.expiresAt == nil)
    await service.reapExpired(now: Date().addingTimeInterval(30))
    #expect(try await service.list(status: nil).count == 3)
    await service.reapExpired(now: Date().addingTimeInterval(61))
    await #expect(throws: AtelierError.self) { try await service.get(doomed.id) }
    let after = try await service.get(paused.id)
    #expect(after.status == .paused && after.expiresAt == nil)
    #expect(try await service.get(forever.id).status == .running)
  }

  // MARK: Wire formats

  @Test func envelopesAreReadAcrossChunks() throws {
    var frames = Connect.envelope(Data(#"{"a":1}"#.utf8))
    var end = Connect.endFrame(ConnectError(.notFound, "gone"))
    frames.writeBuffer(&end)
    var reader = EnvelopeReader()
    var seen: [(UInt8, String)] = []
    while let byte = frames.readSlice(length: 1) {
      reader.append(byte)
      while let (flags, payload) = try reader.next() {
        seen.append((flags, String(decoding: payload, as: UTF8.self)))
      }
    }
    #expect(seen.map(\.0) == [0, Connect.endOfStream])
    #expect(seen.first?.1 == #"{"a":1}"#)
    let endBody = try JSONDecoder().decode(
      [String: [String: String]].self, from: Data((seen.last?.1 ?? "").utf8))
    #expect(endBody == ["error": ["code": "not_found", "message": "gone"]])
  }

  @Test func multipartPartsKeepTheirPathsAndBytes() throws {
    let body = Array(
      ("--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/tmp/a.txt\"\r\n"
        + "Content-Type: application/octet-stream\r\n\r\nhello\r\n--XyZ\r\n"
        + "Content-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\n\r\n--\r\n"
        + "\r\n--XyZ--\r\n").utf8)
    #expect(Multipart.boundary("multipart/form-data; boundary=\"XyZ\"") == "XyZ")
    #expect(Multipart.boundary("application/octet-stream") == nil)
    let parts = try Multipart.parts(body, boundary: "XyZ")
    #expect(
      parts == [
        Multipart.Part(filename: "/tmp/a.txt", content: Array("hello".utf8)),
        Multipart.Part(filename: "b", content: Array("\r\n--\r\n".utf8)),
      ])
    #expect(throws: ConnectError.self) {
      try Multipart.parts(Array(body.prefix(40)), boundary: "XyZ")
    }
  }

  @Test func permissionsReadAsGoPrintsThem() {
    #expect(EnvdFilesystem<BasicRequestContext>.permissions(.directory, 0o755) == "drwxr-xr-x")
    #expect(EnvdFilesystem<BasicRequestContext>.permissions(.file, 0o640) == "-rw-r-----")
  }
}
