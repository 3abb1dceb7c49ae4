import AtelierCore
import Foundation
import Testing

@testable import AtelierHost
@testable import AtelierManager

/// The orchestrator over fake drivers: every rollback, the limit, the reconciler's actions.
@Suite struct SandboxServiceTests {
  @Test func createRunsAndDeleteLeavesNothing() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let sandbox = try await host.service.create(CreateSandboxRequest())
    #expect(sandbox.status == .running)
    let leftovers = host.leftovers()
    #expect(leftovers.vms == 1 && leftovers.ports == 1 && leftovers.leases == 1)
    #expect(leftovers.volumes == ["sandbox-\(sandbox.id)"])
    let result = try await host.service.exec(sandbox.id, ExecRequest(command: "echo hi"))
    #expect(result.stdout == "echo hi")
    try await host.service.delete(sandbox.id)
    #expect(host.leftovers() == FakeHost.nothing)
    #expect(try host.database.sandboxes().isEmpty)
  }

  /// A create that fails at any step leaves no VM, disk, port, lease, folder or row.
  @Test(arguments: [FakeStep.clone, .attach, .boot, .agentReady])
  func failedCreateRollsBackEverything(step: FakeStep) async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    host.faults.fail(at: step)
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest())
    }
    #expect(host.leftovers() == FakeHost.nothing, "after a failure at \(step)")
    #expect(try host.database.sandboxes().isEmpty)
    // And the same service creates fine once the fault is gone.
    host.faults.heal(step)
    _ = try await host.service.create(CreateSandboxRequest())
  }

  /// A restore that fails at any step leaves nothing either, and the snapshot stays usable.
  @Test(arguments: [FakeStep.clone, .attach, .restore, .resume, .agentReady])
  func failedRestoreRollsBackEverything(step: FakeStep) async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let source = try await host.service.create(CreateSandboxRequest())
    let snapshot = try await host.service.snapshot(source.id, name: "s")
    let before = host.leftovers()
    host.faults.fail(at: step)
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    }
    #expect(host.leftovers() == before, "after a failure at \(step)")
    #expect(try host.database.sandboxes().count == 1)
    host.faults.heal(step)
    let restored = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    #expect(restored.snapshotId == snapshot.id)
  }

  @Test func concurrentCreatesRespectTheLimit() async throws {
    let host = try FakeHost(maxSandboxes: 3)
    defer { Task { await host.tearDown() } }
    let outcomes = await withTaskGroup(of: Result<SandboxInfo, any Error>.self) { group in
      for _ in 0..<7 {
        group.addTask {
          await Result(catching: { try await host.service.create(CreateSandboxRequest()) })
        }
      }
      return await group.reduce(into: []) { $0.append($1) }
    }
    let created = outcomes.compactMap { try? $0.get() }
    let refused = outcomes.compactMap { outcome -> AtelierError? in
      if case .failure(let error) = outcome { return error as? AtelierError }
      return nil
    }
    #expect(created.count == 3)
    #expect(refused.count == 4)
    #expect(refused.allSatisfy { $0.code == AtelierError.Code.resourceExhausted })
    #expect(host.leftovers().vms == 3)
  }

  @Test func startsAndForksCountAgainstTheLimit() async throws {
    let host = try FakeHost(maxSandboxes: 2)
    defer { Task { await host.tearDown() } }
    let first = try await host.service.create(CreateSandboxRequest())
    _ = try await host.service.stop(first.id)
    let second = try await host.service.create(CreateSandboxRequest())
    // One slot left: a fork of two does not fit, a start and a create race for the last one.
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.fork(second.id, count: 2)
    }
    async let started = Result(catching: { try await host.service.start(first.id) })
    async let createdAgain = Result(catching: {
      try await host.service.create(CreateSandboxRequest())
    })
    let results = await [started.map { _ in () }, createdAgain.map { _ in () }]
    #expect(results.filter { (try? $0.get()) != nil }.count == 1)
    #expect(host.leftovers().vms == 2)
  }

  @Test func forkMakesRunningCopiesAndCleansUpItsSnapshot() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let parent = try await host.service.create(CreateSandboxRequest())
    let forks = try await host.service.fork(parent.id, count: 3)
    #expect(forks.count == 3)
    #expect(Set(forks.map(\.id)).count == 3 && !forks.map(\.id).contains(parent.id))
    #expect(forks.allSatisfy { $0.status == .running })
    #expect(try await host.service.listSnapshots().isEmpty)
    #expect(host.leftovers().vms == 4)
  }
}
