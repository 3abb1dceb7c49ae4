import AtelierAgentAPI
import AtelierCore
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import AtelierManager
@testable import AtelierServer

/// The manager's routing, authentication and errors, through Hummingbird's test client over
/// fake drivers. The route table is enumerated, so a new route is covered without anyone
/// remembering to.
@Suite struct ServerTests {
  struct Setup: Sendable {
    let host: FakeHost
    let token: String
    let table: RouteTable
    let app: Application<RouterResponder<ManagerRequestContext>>
  }

  func withServer(
    configure: (inout Config) -> Void = { _ in },
    _ body: @escaping @Sendable (Setup, any TestClientProtocol) async throws -> Void
  ) async throws {
    let host = try FakeHost(configure: configure)
    defer { Task { await host.tearDown() } }
    let token = try #require(
      try AdminToken.ensure(database: host.database, path: "\(host.config.dataDir)/admin-token"))
    let (router, table) = try ManagerServer.buildRouter(
      .init(
        config: host.config, service: host.service, database: host.database,
        drivers: await host.service.drivers, qemuPath: nil),
      logger: Logger(label: "atelier.test"))
    let app = Application(responder: router.buildResponder())
    let setup = Setup(host: host, token: token, table: table, app: app)
    try await app.test(.router) { client in try await body(setup, client) }
  }

  /// A path for the route with every parameter filled (`{id}` → an id no sandbox has).
  static func concrete(_ route: RouteDoc) -> String {
    route.path.replacingOccurrences(
      of: #"\{[a-zA-Z]+\}"#, with: "zzzzzzzzzzzz", options: .regularExpression)
  }

  @Test func everyRouteBehindATokenRefusesWithoutIt() async throws {
    try await withServer { setup, client in
      let routes = setup.table.all.filter(\.requiresAuth)
      #expect(routes.count > 40)
      for route in routes {
        let path = Self.concrete(route)
        let variants: [(String, HTTPFields)] = [
          (path, [:]),
          (path, [.authorization: "Bearer atl_wrong"]),
          (path, [.authorization: setup.token]),  // not `Bearer …`
          ("\(path)?token=atl_wrong", [:]),
        ]
        for (uri, headers) in variants {
          try await client.execute(uri: uri, method: route.method, headers: headers) { response in
            #expect(response.status == .unauthorized, "\(route.method) \(uri) \(headers)")
          }
        }
        // ?token= with the real token counts on WebSocket upgrades only.
        var upgrade: HTTPFields = [:]
        if route.webSocket {
          upgrade = [.upgrade: "websocket", .connection: "Upgrade"]
        }
        try await client.execute(
          uri: "\(path)?token=\(setup.token)", method: route.method, headers: upgrade
        ) { response in
          if route.webSocket {
            #expect(response.status != .unauthorized, "\(route.method) \(path) with ?token=")
          } else {
            #expect(response.status == .unauthorized, "\(route.method) \(path) with ?token=")
          }
        }
        // The positive control: the same request with the header gets past authentication
        // (the event stream never ends; it is checked on its own).
        if route.path == "/api/events" { continue }
        try await client.execute(
          uri: path, method: route.method, headers: [.authorization: "Bearer \(setup.token)"]
        ) { response in
          #expect(response.status != .unauthorized, "\(route.method) \(path) with the token")
        }
      }
    }
  }

  @Test func pathsNotInNormalFormNeverReachAHandler() async throws {
    try await withServer { setup, client in
      let samples = [
        "//api/sandboxes", "/api//sandboxes", "/api/./sandboxes", "/api/x/../sandboxes",
        "/%61pi/sandboxes", "/api%2Fsandboxes", "/api/sandboxes/", "/api\\sandboxes",
        "/api/sandboxes/%2e%2e", "//api/system/stats", "/api/snapshots/./x",
      ]
      for path in samples {
        for headers: HTTPFields in [[:], [.authorization: "Bearer \(setup.token)"]] {
          try await client.execute(uri: path, method: .get, headers: headers) { response in
            #expect(!(200..<300).contains(response.status.code), "\(path)")
            #expect([400, 401, 404].contains(response.status.code), "\(path): \(response.status)")
          }
        }
      }
      // A doubled slash is refused before routing, with or without a token.
      try await client.execute(uri: "//api/sandboxes", method: .get) { response in
        #expect(response.status == .badRequest)
      }
      // The positive control: the normal form of the same request is served.
      try await client.execute(
        uri: "/api/sandboxes", method: .get, headers: [.authorization: "Bearer \(setup.token)"]
      ) { response in #expect(response.status == .ok) }
    }
  }

  @Test func unknownPathsAre404AndOtherMethods405() async throws {
    try await withServer { setup, client in
      let auth: HTTPFields = [.authorization: "Bearer \(setup.token)"]
      try await client.execute(uri: "/api/nothing", method: .get, headers: auth) { response in
        #expect(response.status == .notFound)
        #expect(String(buffer: response.body).contains("NOT_FOUND"))
      }
      try await client.execute(uri: "/api/sandboxes", method: .put, headers: auth) { response in
        #expect(response.status == .methodNotAllowed)
        #expect(response.headers[.allow] == "GET, POST")
        #expect(String(buffer: response.body).contains("METHOD_NOT_ALLOWED"))
      }
      // Every documented path answers 405 to a method it does not have.
      for route in setup.table.all {
        let path = Self.concrete(route)
        let served = setup.table.methods(for: path)
        guard
          let other = [HTTPRequest.Method.patch, .put, .delete, .post].first(where: {
            !served.contains($0)
          })
        else { continue }
        try await client.execute(uri: path, method: other, headers: auth) { response in
          #expect(response.status == .methodNotAllowed, "\(other) \(path)")
        }
      }
    }
  }

  @Test func invalidBodiesNameTheField() async throws {
    try await withServer { setup, client in
      let auth: HTTPFields = [
        .authorization: "Bearer \(setup.token)", .contentType: "application/json",
      ]
      let cases: [(String, String)] = [
        (#"{"vcpus": 0}"#, "vcpus"), (#"{"memoryMb": 99999}"#, "memoryMb"),
        (#"{"vcpus": "two"}"#, "vcpus"), (#"{"onIdle": "sleep"}"#, "onIdle"), ("nonsense", "JSON"),
      ]
      for (body, field) in cases {
        try await client.execute(
          uri: "/api/sandboxes", method: .post, headers: auth, body: ByteBuffer(string: body)
        ) { response in
          #expect(response.status == .badRequest, "\(body)")
          #expect(String(buffer: response.body).contains(field), "\(body)")
        }
      }
    }
  }

  /// A host's own limits are what the document states and what a create is held to.
  @Test func configuredLimitsAreDocumentedAndEnforced() async throws {
    try await withServer(configure: { $0.maxVcpus = 2 }) { setup, client in
      try await client.execute(uri: "/openapi.json", method: .get) { response in
        let document = try JSONDecoder().decode(JSONValue.self, from: Data(buffer: response.body))
        let vcpus = document["components"]?["schemas"]?["CreateSandbox"]?["properties"]?["vcpus"]
        #expect(vcpus?["maximum"] == .number(2))
      }
      let headers: HTTPFields = [
        .authorization: "Bearer \(setup.token)", .contentType: "application/json",
      ]
      try await client.execute(
        uri: "/api/sandboxes", method: .post, headers: headers,
        body: ByteBuffer(string: #"{"vcpus": 3}"#)
      ) { response in
        #expect(response.status == .badRequest)
        #expect(String(buffer: response.body).contains("vcpus must be between 1 and 2"))
      }
      try await client.execute(
        uri: "/api/sandboxes", method: .post, headers: headers,
        body: ByteBuffer(string: #"{"vcpus": 2}"#)
      ) { response in #expect(response.status == .created) }
    }
  }

  /// The document describes exactly the routes the router serves.
  @Test func theDocumentIsTheRouteTable() async throws {
    try await withServer { setup, client in
      try await client.execute(uri: "/openapi.json", method: .get) { response in
        #expect(response.status == .ok)
        let document = try JSONDecoder().decode(JSONValue.self, from: Data(buffer: response.body))
        let paths = try #require(document["paths"]?.objectValue)
        var documented = Set<String>()
        for (path, methods) in paths {
          for method in methods.objectValue?.keys ?? [:].keys {
            documented.insert("\(method.uppercased()) \(path)")
          }
        }
        let served = Set(setup.table.all.map { "\($0.method.rawValue) \($0.path)" })
        #expect(documented == served)
        // Bounds come from the validators' constants.
        let create = document["components"]?["schemas"]?["CreateSandbox"]?["properties"]
        #expect(
          create?["vcpus"]?["maximum"] == .number(Double(CreateSandboxRequest.vcpuRange.upperBound))
        )
      }
      // Every agent operation users may reach is served under /api/sandboxes/{id}, and
      // nothing else is.
      let proxied = Set(
        AgentOperations.proxied.map { "\($0.method.rawValue) /api/sandboxes/{id}\($0.path)" })
      let underSandbox = Set(
        setup.table.all.filter { $0.path.hasPrefix("/api/sandboxes/{id}/") }.map {
          "\($0.method.rawValue) \($0.path)"
        })
      let managerOwn: Set<String> = [
        "POST /api/sandboxes/{id}/exec", "POST /api/sandboxes/{id}/stop",
        "POST /api/sandboxes/{id}/start", "POST /api/sandboxes/{id}/restart",
        "POST /api/sandboxes/{id}/pause", "POST /api/sandboxes/{id}/resume",
        "POST /api/sandboxes/{id}/snapshots", "POST /api/sandboxes/{id}/fork",
      ]
      #expect(underSandbox.subtracting(managerOwn) == proxied.subtracting(managerOwn))
      #expect(proxied.isSubset(of: underSandbox))
    }
  }
}
