import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierStore
import Foundation

/// The host side of a snapshot: its frozen disk, its saved VM state, the kernel it ran.
struct SnapshotState: Codable, Sendable {
  var volume: String
  var disk: DiskAttachment
  /// The VM's memory file and device state. Absent in snapshots of Atelier versions before
  /// memory files, whose state is one migration stream at `memoryPath`.
  var saved: SavedVMState?
  var memoryPath: String?
  var kernel: GuestKernel
  /// The VMM and the devices of the VM (`SandboxService.deviceLayout`): a restore must
  /// recreate the same ones. Absent in snapshots from before it was recorded.
  var devices: String?
  /// The disk size of the sandbox it was taken from (restores get the same).
  var diskGb: Int?
  /// The agent key in the snapshot's memory: a restore authenticates with it once, to give
  /// the agent a key of its own. Absent in snapshots from before agent keys.
  var agentKey: String?
  /// Its egress policy (restores and forks keep it unless they ask otherwise).
  var policy: NetworkPolicy?
  /// How long the VM was paused, and the whole snapshot took.
  var pauseMs: Int?
  var totalMs: Int?
}

/// Memory + disk snapshots, restores (a create that does not boot) and forks.
///
/// A snapshot's memory file is shared by every VM restored from it (each maps it privately),
/// so it lives as long as one of them runs: a sandbox row's `memorySnapshotId` names the
/// snapshot its running VM maps, and a snapshot deleted while some do is only retired (hidden
/// from the API) until the last of them stops or goes (`collectRetiredSnapshots`).
extension SandboxService {
  static func info(_ record: SnapshotRecord) -> SnapshotInfo {
    let state = try? JSONDecoder().decode(SnapshotState.self, from: Data(record.state.utf8))
    return SnapshotInfo(
      id: record.id, sandboxId: record.sandboxId, name: record.name, image: record.image,
      vcpus: record.vcpus, memoryMb: record.memoryMb, createdAt: record.createdAt,
      sizeBytes: record.sizeBytes, pauseMs: state?.pauseMs, totalMs: state?.totalMs,
      ownerId: record.ownerId)
  }

  /// Snapshots (of one owner when `ownerId` is given).
  public func listSnapshots(ownerId: String? = nil) throws -> [SnapshotInfo] {
    try database.snapshots(kind: "user", ownerId: ownerId).map(Self.info)
  }

  /// A 404 unless the snapshot exists and `requester` may use it.
  public func requireAccess(toSnapshot id: String, _ requester: Requester) throws {
    guard let record = try database.snapshot(id: id), record.kind == "user",
      requester.mayAccess(ownedBy: record.ownerId)
    else { throw AtelierError.notFound("snapshot \(id) not found") }
  }

  /// A snapshot the API may see: made through it, and not deleted.
  func visibleSnapshot(_ id: String) throws -> SnapshotRecord {
    guard let record = try database.snapshot(id: id), record.kind == "user",
      record.retiredAt == nil
    else {
      throw AtelierError.notFound("snapshot \(id) not found")
    }
    return record
  }

  public func getSnapshot(_ id: String) throws -> SnapshotInfo {
    Self.info(try visibleSnapshot(id))
  }

  public func snapshot(_ id: String, name: String?) async throws -> SnapshotInfo {
    if let name, !SnapshotRequest.nameLength.contains(name.count) {
      throw AtelierError.validation(
        "name must be \(SnapshotRequest.nameLength.lowerBound)–\(SnapshotRequest.nameLength.upperBound) characters"
      )
    }
    let snapshot = try await withSandboxLock(id) {
      try await snapshotLocked(try record(id), name: name, kind: "user")
    }
    return Self.info(snapshot)
  }

  /// Pauses the VM only while its device state and memory are saved (what does not change,
  /// the VMM copies before); the disk is frozen (CoW) at the same instant and the running VM
  /// continues on a new overlay.
  func snapshotLocked(_ row: SandboxRecord, name: String?, kind: String) async throws
    -> SnapshotRecord
  {
    try requireStatus(row, [.running, .paused], for: "snapshot")
    try requireFreeSpace(for: "a snapshot")
    let runtime = Self.runtime(row)
    guard let vm = runtime.vm, let volume = runtime.volume, let kernel = runtime.kernel,
      let network = runtime.network
    else { throw AtelierError(.internal, "sandbox \(row.id) has no VM recorded") }
    let snapshotId = Identifier.make()
    snapshotsInProgress.insert(snapshotId)
    defer { snapshotsInProgress.remove(snapshotId) }
    let directory = "\(config.snapshotsDir)/\(snapshotId)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let wasPaused = Self.status(row) == .paused
    let started = ContinuousClock.now
    var paused = false
    do {
      try await drivers.vmm.prepareSave(vm, into: directory)
      let pausedAt = ContinuousClock.now
      if !wasPaused { try await drivers.vmm.pause(vm) }
      paused = !wasPaused
      let frozen = try await freezeDisk(row.id, vm: vm, volume: volume, snapshotId: snapshotId)
      let saved = try await drivers.vmm.saveState(vm, into: directory)
      if paused {
        try await drivers.vmm.resume(vm)
        paused = false
      }
      let pauseMs = wasPaused ? 0 : (ContinuousClock.now - pausedAt).wholeMilliseconds
      if !wasPaused {
        _ = try? await syncGuest(
          AgentClient(endpoint: network.agent, key: runtime.agentKey), network: network,
          identity: nil)
      }
      var state = SnapshotState(
        volume: VolumeNames.snapshot(snapshotId), disk: frozen, saved: saved, kernel: kernel,
        devices: deviceLayout(network), diskGb: runtime.diskGb, agentKey: runtime.agentKey,
        policy: runtime.policy, pauseMs: pauseMs)
      let diskBytes =
        await drivers.volumes.allocatedBytes(of: VolumeNames.snapshot(snapshotId)) ?? 0
      state.totalMs = (ContinuousClock.now - started).wholeMilliseconds
      let record = SnapshotRecord(
        id: snapshotId, sandboxId: row.id, name: name ?? "\(row.id)-\(ISO8601.format(Date()))",
        image: row.image, vcpus: row.vcpus, memoryMb: row.memoryMb, createdAt: Date(),
        sizeBytes: FileCopy.allocatedBytes(saved.memoryPath)
          + FileCopy.allocatedBytes(saved.devicesPath) + diskBytes,
        kind: kind, state: Self.encode(state), ownerId: row.ownerId)
      try database.insert(record)
      logger.info(
        "snapshot taken",
        metadata: [
          "sandbox": "\(row.id)", "snapshot": "\(snapshotId)", "pauseMs": "\(pauseMs)",
          "totalMs": "\(state.totalMs ?? 0)",
        ])
      if kind == "user" {
        let event = SnapshotEvent(snapshot: Self.info(record))
        events.publish("snapshot.created", event)
      }
      return record
    } catch {
      if paused { try? await drivers.vmm.resume(vm) }
      try? FileManager.default.removeItem(atPath: directory)
      if let error = error as? AtelierError { throw error }
      throw AtelierError(.unavailable, "snapshot of \(row.id) failed: \(error)")
    }
  }

  /// Freezes the paused VM's disk as the snapshot's volume; the VM goes on on a new top.
  func freezeDisk(_ id: String, vm: VMHandle, volume: String, snapshotId: String) async throws
    -> DiskAttachment
  {
    let plan = try await drivers.volumes.prepareFreeze(
      volume, as: VolumeNames.snapshot(snapshotId))
    // A store that froze the disk without a new top (LVM thin snapshots) needs no switch.
    if plan.next != plan.previous {
      do {
        try await drivers.vmm.switchDisk(vm, to: plan.next)
      } catch {
        await drivers.volumes.abortFreeze(plan)
        throw error
      }
    }
    try await drivers.volumes.commitFreeze(plan)
    let disk = drivers.volumes.disk(of: volume) ?? plan.next
    try updateRuntime(id) { $0.disk = disk }
    return plan.frozen
  }

  /// The VMM and the network devices a VM of `network` has, e.g. `qemu/user+private-nic`.
  func deviceLayout(_ network: NetworkAttachment?) -> String {
    guard let network else { return "\(drivers.vmm.name)/none" }
    let backend =
      switch network.backend {
      case .userMode: "user"
      case .tap: "tap"
      }
    let channel =
      switch network.agentChannel {
      case .sharedInterface: "shared"
      case .privateInterface: "private-nic"
      case .vsock: "vsock"
      }
    return "\(drivers.vmm.name)/\(backend)+\(channel)"
  }

  /// The saved state of a snapshot a restore can use, or why not.
  func restorableState(_ snapshot: SnapshotRecord) throws -> (SnapshotState, SavedVMState) {
    guard
      let state = try? JSONDecoder().decode(SnapshotState.self, from: Data(snapshot.state.utf8))
    else { throw AtelierError.conflict("snapshot \(snapshot.id) cannot be read") }
    guard let saved = state.saved else {
      throw AtelierError.conflict(
        "snapshot \(snapshot.id) was saved by an earlier Atelier as one migration stream, which "
          + "this version no longer restores (guest memory now lives in files that restores "
          + "share). Take a new snapshot of a running sandbox (POST /api/sandboxes/{id}/"
          + "snapshots) and delete this one (DELETE /api/snapshots/\(snapshot.id))")
    }
    guard FileManager.default.fileExists(atPath: saved.memoryPath),
      FileManager.default.fileExists(atPath: saved.devicesPath)
    else { throw AtelierError.conflict("snapshot \(snapshot.id) has no memory state left") }
    return (state, saved)
  }

  /// A new sandbox from a snapshot: its own disk (a clone of the frozen one), port forward,
  /// id and hostname; memory mapped from the snapshot's file instead of booting; then the guest
  /// is told who it is now, the time, given fresh entropy and a key of its own.
  func restore(
    snapshotId: String, terms: SandboxPolicy, network request: NetworkPolicyRequest? = nil,
    forking: Bool = false, owner: String? = nil
  ) async throws -> SandboxInfo {
    guard let snapshot = try database.snapshot(id: snapshotId),
      forking || (snapshot.kind == "user" && snapshot.retiredAt == nil)
    else {
      throw AtelierError.notFound("snapshot \(snapshotId) not found")
    }
    let (state, saved) = try restorableState(snapshot)
    guard state.agentKey != nil else {
      throw AtelierError.conflict(
        "snapshot \(snapshotId) is from before agent keys: its agent cannot be given one")
    }
    let policy = try resolvePolicy(request, over: state.policy)
    try requireFreeSpace(for: "a create")
    // The row names the memory file it will map from its insert on: a delete of the snapshot
    // from now on only retires it.
    let row = try reserve(
      image: snapshot.image, vcpus: snapshot.vcpus, memoryMb: snapshot.memoryMb, terms: terms,
      snapshotId: snapshotId, memorySnapshotId: snapshotId,
      runtime: SandboxRuntime(
        kernel: state.kernel, diskGb: state.diskGb, agentKey: AgentKey.generate(),
        policy: policy),
      owner: owner)
    defer { collectRetiredSnapshots() }
    return try await build(row.id) { undo in
      let started = ContinuousClock.now
      let volumeName = VolumeNames.sandbox(row.id)
      let disk = try await cloneVolume(base: state.disk, to: volumeName)
      undo.push { [drivers] in try? await drivers.volumes.remove(volumeName) }
      try updateRuntime(row.id) {
        $0.volume = volumeName
        $0.disk = disk
      }
      let cloned = ContinuousClock.now
      let network = try await attachNetwork(row.id, undo: &undo)
      let current = deviceLayout(network)
      let taken = state.devices ?? current
      guard taken == current else {
        throw AtelierError.conflict(
          "snapshot \(snapshotId) was taken on a VM with \(taken); this manager makes "
            + "\(current) (ATELIER_VMM, ATELIER_NETWORK or ATELIER_QEMU_VSOCK "
            + "changed since), so it cannot be restored here")
      }
      let spec = try vmSpec(try record(row.id), network: network)
      let directory = spec.runtimeDirectory
      undo.push { FolderRemoval.removeTree(directory) }
      // The drive holds the new key (what a later boot reads); the restored agent has the
      // snapshot's in memory until it is told.
      try writeKeyDrive(row.id, key: Self.runtime(try record(row.id)).agentKey)
      let vm: VMHandle
      do {
        vm = try await drivers.vmm.restore(spec, from: saved)
      } catch let error as VMMError {
        logger.error(
          "restore failed: \(error.message)\n\(error.consoleTail)",
          metadata: ["sandbox": "\(row.id)"])
        throw AtelierError(.bootFailed, "sandbox failed to restore: \(error.message)")
      }
      undo.push { [drivers] in await drivers.vmm.kill(vm) }
      try updateRuntime(row.id) { $0.vm = vm }
      attached.insert(row.id)
      try await drivers.vmm.resume(vm)
      let launched = ContinuousClock.now
      try await announce(row, vm: vm, network: network, snapshotKey: state.agentKey)
      try await configureGuestServices(row.id)
      let ready = ContinuousClock.now
      return SpawnTimings(
        cloneMs: (cloned - started).wholeMilliseconds,
        bootMs: (launched - cloned).wholeMilliseconds,
        agentMs: (ready - launched).wholeMilliseconds, totalMs: (ready - started).wholeMilliseconds)
    }
  }

  /// N new sandboxes continuing from the parent's current memory and disk: one snapshot (the
  /// parent pauses only while it is saved), N restores of it. The snapshot is retired at once;
  /// its memory file lives as long as a fork maps it.
  public func fork(_ id: String, count: Int?, network: NetworkPolicyRequest? = nil) async throws
    -> [SandboxInfo]
  {
    let count = count ?? 1
    try Self.check("count", count, in: ForkRequest.countRange)
    // Checked before the parent is paused for its snapshot.
    _ = try resolvePolicy(network, over: Self.runtime(try record(id)).policy)
    let (parent, snapshot) = try await withSandboxLock(id) {
      let row = try record(id)
      try requireStatus(row, [.running], for: "fork")
      let remaining = try remainingCapacity()
      guard count <= remaining else {
        throw AtelierError(
          .resourceExhausted,
          "forking \(count) would exceed the sandbox limit (\(config.maxSandboxes - remaining) of "
            + "\(config.maxSandboxes) used)")
      }
      return (row, try await snapshotLocked(row, name: "fork of \(id)", kind: "fork"))
    }
    // Forks are copies: the parent's idle policy and environment, and what is left of its
    // lifetime.
    let terms = SandboxPolicy(inheritingFrom: parent)
    var created: [SandboxInfo] = []
    var failure: (any Error)?
    await withTaskGroup(of: Result<SandboxInfo, any Error>.self) { group in
      for _ in 0..<count {
        group.addTask {
          // The forks belong to the parent's owner.
          await Result(catching: {
            try await self.restore(
              snapshotId: snapshot.id, terms: terms, network: network, forking: true,
              owner: parent.ownerId)
          })
        }
      }
      for await result in group {
        switch result {
        case .success(let sandbox): created.append(sandbox)
        case .failure(let error): failure = failure ?? error
        }
      }
    }
    try? database.retireSnapshot(id: snapshot.id)
    if let failure {
      for sandbox in created { try? await delete(sandbox.id) }
      collectRetiredSnapshots()
      await collectVolumeGarbage()
      throw failure
    }
    collectRetiredSnapshots()
    return created.sorted { $0.createdAt < $1.createdAt }
  }

  /// Deletes a snapshot; while restores still map its memory file it is only retired.
  public func deleteSnapshot(_ id: String) async throws {
    let record = try visibleSnapshot(id)
    if try database.memoryUsers(ofSnapshot: id) > 0 {
      try database.retireSnapshot(id: id)
      logger.info(
        "snapshot retired: restores still map its memory", metadata: ["snapshot": "\(id)"])
    } else {
      try database.deleteSnapshot(id: id)
      try? FileManager.default.removeItem(atPath: "\(config.snapshotsDir)/\(id)")
    }
    await collectVolumeGarbage()
    let event = SnapshotEvent(snapshot: Self.info(record))
    events.publish("snapshot.deleted", event)
  }

  /// Removes the rows and files of retired snapshots no VM maps any more.
  @discardableResult
  func collectRetiredSnapshots() -> [String] {
    let unused = (try? database.unusedRetiredSnapshotIds()) ?? []
    for id in unused {
      _ = try? database.deleteSnapshot(id: id)
      try? FileManager.default.removeItem(atPath: "\(config.snapshotsDir)/\(id)")
    }
    if !unused.isEmpty {
      logger.info("removed retired snapshots: \(unused.joined(separator: ", "))")
    }
    return unused
  }

  /// The sandbox's VM no longer maps a snapshot's memory (it stopped, or boots afresh).
  func releaseSnapshotMemory(_ id: String) {
    guard var row = try? record(id), row.memorySnapshotId != nil else { return }
    row.memorySnapshotId = nil
    try? database.update(row)
    collectRetiredSnapshots()
  }

  /// Removes frozen disks that no live snapshot and no sandbox disk needs any more.
  @discardableResult
  func collectVolumeGarbage() async -> [String] {
    let ids = ((try? database.snapshotIds(includingRetired: false)) ?? []) + snapshotsInProgress
    let keep = Set(ids.map { VolumeNames.snapshot($0) })
    let removed = await drivers.volumes.collectGarbage(keep: keep)
    if !removed.isEmpty {
      logger.info("removed unused snapshot disks: \(removed.joined(separator: ", "))")
    }
    return removed
  }
}

extension Result where Failure == any Error {
  init(catching body: () async throws -> Success) async {
    do { self = .success(try await body()) } catch { self = .failure(error) }
  }
}
