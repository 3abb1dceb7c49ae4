import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierStore
import Foundation

/// The host side of a snapshot: its frozen disk, its memory file, the kernel it ran.
struct SnapshotState: Codable, Sendable {
  var volume: String
  var disk: DiskAttachment
  var memoryPath: String
  var kernel: GuestKernel
  /// The VMM and the devices of the VM (`SandboxService.deviceLayout`): a restore must
  /// recreate the same ones. Absent in snapshots from before it was recorded.
  var devices: String?
  /// The disk size of the sandbox it was taken from (restores get the same).
  var diskGb: Int?
  /// The agent key in the snapshot's memory: a restore authenticates with it once, to give
  /// the agent a key of its own. Absent in snapshots from before agent keys.
  var agentKey: String?
}

/// Memory + disk snapshots, restores (a create that does not boot) and forks.
extension SandboxService {
  static func info(_ record: SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo(
      id: record.id, sandboxId: record.sandboxId, name: record.name, image: record.image,
      vcpus: record.vcpus, memoryMb: record.memoryMb, createdAt: record.createdAt,
      sizeBytes: record.sizeBytes)
  }

  public func listSnapshots() throws -> [SnapshotInfo] {
    try database.snapshots(kind: "user").map(Self.info)
  }

  public func getSnapshot(_ id: String) throws -> SnapshotInfo {
    guard let record = try database.snapshot(id: id), record.kind == "user" else {
      throw AtelierError.notFound("snapshot \(id) not found")
    }
    return Self.info(record)
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

  /// Pauses the VM only while its memory is written; the disk is frozen (CoW) at the same
  /// instant and the running VM continues on a new overlay.
  func snapshotLocked(_ row: SandboxRecord, name: String?, kind: String) async throws
    -> SnapshotRecord
  {
    try requireStatus(row, [.running, .paused], for: "snapshot")
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
    do {
      if !wasPaused { try await drivers.vmm.pause(vm) }
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
      try updateRuntime(row.id) { $0.disk = disk }
      let memoryPath = "\(directory)/memory.state"
      try await drivers.vmm.saveState(vm, to: memoryPath)
      if !wasPaused {
        try await drivers.vmm.resume(vm)
        try? await syncGuest(
          AgentClient(endpoint: network.agent, key: runtime.agentKey), network: network,
          identity: nil)
      }
      let state = SnapshotState(
        volume: VolumeNames.snapshot(snapshotId), disk: plan.frozen, memoryPath: memoryPath,
        kernel: kernel, devices: deviceLayout(network), diskGb: runtime.diskGb,
        agentKey: runtime.agentKey)
      let diskBytes =
        await drivers.volumes.allocatedBytes(of: VolumeNames.snapshot(snapshotId)) ?? 0
      let record = SnapshotRecord(
        id: snapshotId, sandboxId: row.id, name: name ?? "\(row.id)-\(ISO8601.format(Date()))",
        image: row.image, vcpus: row.vcpus, memoryMb: row.memoryMb, createdAt: Date(),
        sizeBytes: Self.allocatedBytes(memoryPath) + Self.allocatedBytes("\(memoryPath).vmstate")
          + diskBytes,
        kind: kind, state: Self.encode(state))
      try database.insert(record)
      logger.info(
        "snapshot taken",
        metadata: [
          "sandbox": "\(row.id)", "snapshot": "\(snapshotId)",
          "ms": "\((ContinuousClock.now - started).wholeMilliseconds)",
        ])
      if kind == "user" {
        let event = SnapshotEvent(snapshot: Self.info(record))
        events.publish("snapshot.created", event)
      }
      return record
    } catch {
      if !wasPaused { try? await drivers.vmm.resume(vm) }
      try? FileManager.default.removeItem(atPath: directory)
      if let error = error as? AtelierError { throw error }
      throw AtelierError(.unavailable, "snapshot of \(row.id) failed: \(error)")
    }
  }

  static func allocatedBytes(_ path: String) -> Int64 {
    var info = stat()
    guard stat(path, &info) == 0 else { return 0 }
    return Int64(info.st_blocks) * 512
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

  /// A new sandbox from a snapshot: its own disk (a clone of the frozen one), port forward,
  /// id and hostname; memory restored instead of booting; then the guest is told who it is
  /// now, the time, and given fresh entropy.
  func restore(snapshotId: String, policy: SandboxPolicy) async throws -> SandboxInfo {
    guard let snapshot = try database.snapshot(id: snapshotId) else {
      throw AtelierError.notFound("snapshot \(snapshotId) not found")
    }
    guard
      let state = try? JSONDecoder().decode(SnapshotState.self, from: Data(snapshot.state.utf8)),
      FileManager.default.fileExists(atPath: state.memoryPath)
    else { throw AtelierError.conflict("snapshot \(snapshotId) has no memory state left") }
    guard state.agentKey != nil else {
      throw AtelierError.conflict(
        "snapshot \(snapshotId) is from before agent keys: its agent cannot be given one")
    }
    let row = try reserve(
      image: snapshot.image, vcpus: snapshot.vcpus, memoryMb: snapshot.memoryMb, policy: policy,
      snapshotId: snapshotId,
      runtime: SandboxRuntime(
        kernel: state.kernel, diskGb: state.diskGb, agentKey: AgentKey.generate()))
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
      // Snapshots from before the layout was recorded: only QEMU user-mode sandboxes have
      // changed since (their agent moved from eth0's forward to a private NIC).
      let current = deviceLayout(network)
      let taken =
        state.devices ?? (current == "qemu/user+private-nic" ? "qemu/user+shared" : current)
      guard taken == current else {
        throw AtelierError.conflict(
          "snapshot \(snapshotId) was taken on a VM with \(taken); this manager makes "
            + "\(current) (ATELIER_VMM, ATELIER_NETWORK or ATELIER_QEMU_VSOCK "
            + "changed since), so it cannot be restored here")
      }
      let spec = try vmSpec(try record(row.id), network: network)
      let directory = spec.runtimeDirectory
      undo.push { try? FileManager.default.removeItem(atPath: directory) }
      // The drive holds the new key (what a later boot reads); the restored agent has the
      // snapshot's in memory until it is told.
      try writeKeyDrive(row.id, key: Self.runtime(try record(row.id)).agentKey)
      let vm: VMHandle
      do {
        vm = try await drivers.vmm.restore(spec, statePath: state.memoryPath)
      } catch let error as VMMError {
        logger.error(
          "restore failed: \(error.message)\n\(error.consoleTail)",
          metadata: ["sandbox": "\(row.id)"])
        throw AtelierError(.bootFailed, "sandbox failed to restore: \(error.message)")
      }
      undo.push { [drivers] in await drivers.vmm.kill(vm) }
      try updateRuntime(row.id) { $0.vm = vm }
      try await drivers.vmm.resume(vm)
      let launched = ContinuousClock.now
      let agent = AgentClient(endpoint: network.agent, key: state.agentKey)
      do {
        // The restored agent still answers as the original (and to its key) until told.
        try await agent.waitUntilReady(
          sandboxId: nil, timeout: .seconds(config.bootTimeoutSeconds),
          stillBooting: { [drivers] in drivers.vmm.isRunning(vm) })
        try await replaceAgentKey(
          row.id, snapshotKey: state.agentKey, network: network,
          identity: (row.id, row.hostname))
      } catch {
        throw AtelierError(.bootFailed, "restored sandbox did not answer: \(error)")
      }
      try await waitForAgent(row.id, vm: vm, network: network)
      try await configureGuestServices(row.id)
      let ready = ContinuousClock.now
      return SpawnTimings(
        cloneMs: (cloned - started).wholeMilliseconds,
        bootMs: (launched - cloned).wholeMilliseconds,
        agentMs: (ready - launched).wholeMilliseconds, totalMs: (ready - started).wholeMilliseconds)
    }
  }

  /// N new sandboxes continuing from the parent's current memory and disk. The parent is
  /// paused only while its memory is written.
  public func fork(_ id: String, count: Int?) async throws -> [SandboxInfo] {
    let count = count ?? 1
    try Self.check("count", count, in: ForkRequest.countRange)
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
    let policy = SandboxPolicy(inheritingFrom: parent)
    var created: [SandboxInfo] = []
    var failure: (any Error)?
    await withTaskGroup(of: Result<SandboxInfo, any Error>.self) { group in
      for _ in 0..<count {
        group.addTask {
          await Result(catching: {
            try await self.restore(snapshotId: snapshot.id, policy: policy)
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
    // The forks no longer need the memory file; their disks keep the frozen disk alive.
    try? database.deleteSnapshot(id: snapshot.id)
    try? FileManager.default.removeItem(atPath: "\(config.snapshotsDir)/\(snapshot.id)")
    if let failure {
      for sandbox in created { try? await delete(sandbox.id) }
      await collectVolumeGarbage()
      throw failure
    }
    return created.sorted { $0.createdAt < $1.createdAt }
  }

  public func deleteSnapshot(_ id: String) async throws {
    guard let record = try database.snapshot(id: id), record.kind == "user" else {
      throw AtelierError.notFound("snapshot \(id) not found")
    }
    try database.deleteSnapshot(id: id)
    try? FileManager.default.removeItem(atPath: "\(config.snapshotsDir)/\(id)")
    await collectVolumeGarbage()
    let event = SnapshotEvent(snapshot: Self.info(record))
    events.publish("snapshot.deleted", event)
  }

  /// Removes frozen disks that no snapshot and no sandbox disk needs any more.
  @discardableResult
  func collectVolumeGarbage() async -> [String] {
    let ids = ((try? database.snapshotIds()) ?? []) + snapshotsInProgress
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
