import AtelierCore
import AtelierStore
import Foundation
import Testing

@testable import AtelierHost
@testable import AtelierManager

/// How long a snapshot's memory file lives (as long as a VM maps it), over fake drivers; the
/// free-space floor; stream-format snapshots.
@Suite struct SnapshotLifetimeTests {
  func folder(_ host: FakeHost, _ id: String) -> Bool {
    FileManager.default.fileExists(atPath: "\(host.config.snapshotsDir)/\(id)")
  }

  @Test func aDeletedSnapshotLivesUntilItsLastRestoreStopsOrGoes() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let source = try await host.service.create(CreateSandboxRequest())
    let snapshot = try await host.service.snapshot(source.id, name: "s")
    #expect(snapshot.pauseMs != nil && snapshot.totalMs != nil)
    let one = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    let two = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    #expect(try host.database.memoryUsers(ofSnapshot: snapshot.id) == 2)

    // Deleted while two VMs map it: gone from the API, kept on the host.
    try await host.service.deleteSnapshot(snapshot.id)
    await #expect(throws: AtelierError.self) { _ = try await host.service.getSnapshot(snapshot.id) }
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    }
    #expect(try await host.service.listSnapshots().isEmpty)
    #expect(folder(host, snapshot.id))
    // A stopped restore maps nothing any more; a deleted one neither.
    _ = try await host.service.stop(one.id)
    #expect(try host.database.memoryUsers(ofSnapshot: snapshot.id) == 1)
    #expect(folder(host, snapshot.id))
    // Started again, it boots: it does not map the snapshot again.
    _ = try await host.service.start(one.id)
    #expect(try host.database.memoryUsers(ofSnapshot: snapshot.id) == 1)
    try await host.service.delete(two.id)
    #expect(!folder(host, snapshot.id))
    #expect(try host.database.snapshot(id: snapshot.id) == nil)
  }

  @Test func aForksSnapshotIsHiddenAndGoesWithTheLastFork() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let parent = try await host.service.create(CreateSandboxRequest())
    let forks = try await host.service.fork(parent.id, count: 2)
    #expect(try await host.service.listSnapshots().isEmpty)
    let forkSnapshot = try #require(try host.database.sandbox(id: forks[0].id)?.memorySnapshotId)
    #expect(folder(host, forkSnapshot))
    try await host.service.delete(forks[0].id)
    #expect(folder(host, forkSnapshot))
    try await host.service.delete(forks[1].id)
    #expect(!folder(host, forkSnapshot))
  }

  @Test func theReconcilerRemovesRetiredSnapshotsNoVMMapsAndOrphanFolders() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let source = try await host.service.create(CreateSandboxRequest())
    let snapshot = try await host.service.snapshot(source.id, name: "s")
    // Retired by a manager that died before it removed the files; and a folder with no row.
    try host.database.retireSnapshot(id: snapshot.id)
    let orphan = "\(host.config.snapshotsDir)/orphan000001"
    try FileManager.default.createDirectory(atPath: orphan, withIntermediateDirectories: true)
    let report = await host.service.reconcile()
    #expect(Set(report.removedSnapshotFiles) == [snapshot.id, "orphan000001"])
    #expect(!folder(host, snapshot.id) && !FileManager.default.fileExists(atPath: orphan))
  }

  @Test func streamFormatSnapshotsAreRefusedWithWhatToDo() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    // A row as an earlier Atelier wrote it: one migration stream, no saved state.
    let legacy = SnapshotRecord(
      id: "legacysnap01", sandboxId: "gonesandbox1", name: "old", image: "tiny", vcpus: 1,
      memoryMb: 256, createdAt: Date(), sizeBytes: 1, kind: "user",
      state: #"{"volume":"snapshot-legacysnap01","disk":{"path":"/x","format":"qcow2"},"#
        + #""memoryPath":"/x/memory.state","kernel":{"version":"6","kernelPath":"/k","#
        + #""initrdPath":"/i"}}"#)
    try host.database.insert(legacy)
    let error = await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest(snapshot: "legacysnap01"))
    }
    #expect(error?.code == .conflict)
    #expect(error?.message.lowercased().contains("take a new snapshot") == true)
    #expect(try host.database.sandboxes().isEmpty)
  }

  @Test func belowTheFreeSpaceFloorCreatesAndSnapshotsAreRefused() async throws {
    let host = try FakeHost(minFreeGb: 100_000)
    defer { Task { await host.tearDown() } }
    let error = await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest())
    }
    #expect(error?.code == .resourceExhausted)
    #expect(error?.message.contains("ATELIER_MIN_FREE_GB") == true)
    #expect(host.leftovers() == FakeHost.nothing)
    #expect(try host.database.sandboxes().isEmpty)
  }
}
