import AtelierAgentAPI
import Foundation
import Hummingbird
import HummingbirdTesting
import Testing

@testable import AtelierAgent

@Suite struct OperationTableTests {
  /// The agent's router holds exactly the table's routes: one cannot exist without the other.
  @Test func theRouterIsTheTable() {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    let router = AgentMain.makeRouter(routes: agent.routes)
    let registered = Set(router.routes.map { "\($0.method.rawValue) \($0.path.description)" })
    let table = Set(AgentOperations.all.map { "\($0.method.rawValue) \($0.path)" })
    #expect(
      registered == table,
      "only on the router: \(registered.subtracting(table)); only in the table: \(table.subtracting(registered))"
    )
    #expect(table.count == AgentOperations.all.count, "two entries for one route")
    #expect(Set(AgentOperations.all.map(\.id)) == Set(AgentOperation.ID.allCases))
  }

  @Test func entriesAreConsistent() {
    for operation in AgentOperations.all {
      #expect(operation.path.hasPrefix("/"), "\(operation.id)")
      if operation.isWebSocket {
        #expect(operation.method == .get && operation.status == 101, "\(operation.id)")
        #expect(operation.request == nil && operation.response == nil, "\(operation.id)")
      }
      if operation.status == 204 { #expect(operation.response == nil, "\(operation.id)") }
      if operation.method == .get { #expect(operation.request == nil, "\(operation.id)") }
      #expect(operation.errors.contains(.internal))
      #expect(operation.errors.contains(.unauthorized) == operation.requiresKey, "\(operation.id)")
      for parameter in operation.pathParameters {
        #expect(["name", "sid", "pid"].contains(parameter.name), "\(operation.id)")
      }
    }
    // What the manager must keep to itself.
    let managerOnly = AgentOperations.all.filter { !$0.proxied }.map(\.path)
    #expect(
      Set(managerOnly)
        == [
          "/health", "/system/resume", "/system/poweroff", "/system/guest-services",
          "/guest-services/tunnel", "/system/environment", "/files/watch", "/files/move",
          // The process table: for the E2B adapter.
          "/processes", "/processes/{pid}/events", "/processes/{pid}/input",
          "/processes/{pid}/close-stdin", "/processes/{pid}/signal", "/processes/{pid}/resize",
        ])
    #expect(AgentOperations.proxied.contains { $0.method == .get && $0.path == "/dev/{name}" })
    #expect(AgentOperations.operation(.filesUpload).request?.isRaw == true)
    #expect(
      AgentOperations.operation(.execBatch).request?.type.map { ObjectIdentifier($0) }
        == ObjectIdentifier(ExecBatchRequest.self))
  }

  /// Each JSON answer is the type the table names (a handler returning another type trips the
  /// router's assertion; this checks the ones that need no guest state).
  @Test func answersHaveTheTypesOfTheTable() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.router) { client in
      for id in [AgentOperation.ID.health, .servicesList, .devList, .terminalsList, .metrics] {
        let operation = AgentOperations.operation(id)
        try await client.execute(
          uri: operation.path, method: .get, headers: TestAgent.bearer()
        ) { response in
          #expect(response.status.code == operation.status, "\(id)")
          let type = try #require(operation.response?.type)
          #expect(throws: Never.self, "\(id)") {
            _ = try JSONDecoder().decode(type, from: Data(response.text.utf8))
          }
        }
      }
      try await client.execute(
        uri: "/files/stat?path=/", method: .get, headers: TestAgent.bearer()
      ) { response in
        #expect(response.status == .ok)
        #expect(throws: Never.self) {
          _ = try JSONDecoder().decode(FileEntry.self, from: Data(response.text.utf8))
        }
      }
    }
  }
}
