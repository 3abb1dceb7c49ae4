import AtelierCore
import AtelierStore
import Foundation
import Logging
import Testing

@testable import AtelierHost
@testable import AtelierManager

/// Each repair of the reconciler, carried out on fake drivers.
@Suite struct ReconcilerTests {
  @Test func aRunningSandboxWhoseVMDiedIsMarkedError() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let sandbox = try await host.service.create(CreateSandboxRequest())
    for vm in host.vmm.running { await host.vmm.kill(vm) }
    let report = await host.service.reconcile()
    #expect(report.markedError == [sandbox.id])
    #expect(try await host.service.get(sandbox.id).status == .error)
    #expect(host.leftovers().ports == 0)
  }

  @Test func aRestartedManagerAdoptsLiveVMs() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let sandbox = try await host.service.create(CreateSandboxRequest())
    // A second manager over the same database and host: the VM is taken over, not killed.
    let restarted = SandboxService(
      config: host.config, database: host.database, drivers: await host.service.drivers,
      logger: Logger(label: "atelier.test"))
    let report = await restarted.reconcile()
    #expect(report.killedProcesses.isEmpty && report.markedError.isEmpty)
    let result = try await restarted.exec(sandbox.id, ExecRequest(command: "still here"))
    #expect(result.stdout == "still here")
  }

  @Test func orphansNoRowOwnsAreRemoved() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let kept = try await host.service.create(CreateSandboxRequest())
    let orphan = Identifier.make()
    _ = try await host.volumes.clone(
      base: DiskAttachment(path: "/dev/null", format: .raw), to: "sandbox-\(orphan)",
      minimumSizeBytes: 0)
    try FileManager.default.createDirectory(
      atPath: "\(host.config.sandboxesDir)/\(orphan)", withIntermediateDirectories: true)
    let network = try await host.network.attach(
      sandboxId: orphan, policy: NetworkPolicy(internet: true))
    _ = try await host.vmm.boot(
      VMSpec(
        sandboxId: orphan, runtimeDirectory: "\(host.config.sandboxesDir)/\(orphan)",
        kernelPath: "", initrdPath: "", kernelArguments: [], disk: .init(path: "", format: .raw),
        vcpus: 1, memoryMb: 128, network: network))
    let report = await host.service.reconcile()
    #expect(report.removedVolumes == ["sandbox-\(orphan)"])
    #expect(report.removedDirectories == [orphan])
    #expect(report.killedProcesses.count == 1)
    // What a row owns is left alone.
    #expect(host.vmm.running.map(\.sandboxId) == [kept.id])
    #expect(host.volumes.names == ["sandbox-\(kept.id)"])
  }

  @Test func anInterruptedCreateIsAbandoned() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    // A row left `creating` by a manager that died, with the disk it had made.
    let id = Identifier.make()
    let now = Date()
    try host.database.insert(
      SandboxRecord(
        id: id, status: "creating", image: "tiny", vcpus: 1, memoryMb: 256, hostname: "sbx-\(id)",
        createdAt: now, updatedAt: now))
    _ = try await host.volumes.clone(
      base: DiskAttachment(path: "/dev/null", format: .raw), to: "sandbox-\(id)",
      minimumSizeBytes: 0)
    let report = await host.service.reconcile()
    #expect(report.abandonedCreates == [id])
    #expect(host.leftovers() == FakeHost.nothing)
    #expect(try host.database.sandbox(id: id) == nil)
  }

  /// The plan is made across awaits: a create that starts while the reconciler runs must not
  /// be torn down as an interrupted one, nor its disk or folder as orphans.
  @Test func aCreateInFlightIsNeverTornDown() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    host.faults.delay(.boot, by: .milliseconds(400))
    async let created = host.service.create(CreateSandboxRequest())
    var reports: [ReconcileReport] = []
    for _ in 0..<20 {
      reports.append(await host.service.reconcile())
      try await Task.sleep(for: .milliseconds(25))
    }
    let sandbox = try await created
    #expect(sandbox.status == .running)
    #expect(reports.allSatisfy { $0.isEmpty }, "\(reports.filter { !$0.isEmpty })")
    #expect(host.leftovers().volumes == ["sandbox-\(sandbox.id)"])
  }

  /// The same, deterministically: a plan made before a create reserved its row (so it names
  /// the row as interrupted and its disk as an orphan) changes nothing once the create is in
  /// flight.
  @Test func aStalePlanLeavesACreateInFlightAlone() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let row = try await host.service.reserve(
      image: "tiny", vcpus: 1, memoryMb: 256, terms: try SandboxPolicy(CreateSandboxRequest()),
      snapshotId: nil, runtime: SandboxRuntime(), owner: nil)
    _ = try await host.volumes.clone(
      base: DiskAttachment(path: "/dev/null", format: .raw), to: "sandbox-\(row.id)",
      minimumSizeBytes: 0)
    let report = await host.service.perform(
      [.abandonCreate(id: row.id), .removeOrphanVolume(name: "sandbox-\(row.id)")],
      rows: [row.id: row])
    #expect(report.isEmpty)
    #expect(try host.database.sandbox(id: row.id) != nil)
    #expect(host.volumes.names == ["sandbox-\(row.id)"])
  }
}

extension SandboxService {
  /// Carries out a plan as `reconcile` does.
  func perform(_ actions: [ReconcileAction], rows: [String: SandboxRecord]) async
    -> ReconcileReport
  {
    var report = ReconcileReport()
    for action in actions { await perform(action, rows: rows, live: [:], into: &report) }
    return report
  }
}
