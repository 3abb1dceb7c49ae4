import AtelierCore
import AtelierHost
import AtelierProcess
import AtelierStore
import Foundation

/// What the database says about one sandbox, as the reconciler sees it.
public struct RowState: Sendable, Equatable {
  public var id: String
  public var status: String
  public init(id: String, status: String) {
    self.id = id
    self.status = status
  }
}

/// One repair. Decided by `ReconcilePlanner` (pure, unit-tested), carried out by the service.
public enum ReconcileAction: Sendable, Equatable {
  /// The row says running and its VM is alive: take it over.
  case adopt(id: String)
  /// The row says running but its VM is gone.
  case markError(id: String, reason: String)
  /// A create that never finished (the manager died): remove everything it made and the row.
  case abandonCreate(id: String)
  /// A stop that never finished (the manager died during it): kill what is left of the VM
  /// and mark it stopped, so it can be started again.
  case finishStop(id: String, pid: Int32?)
  /// A VM no live row owns.
  case killOrphanVM(id: String, pid: Int32)
  case removeOrphanVolume(name: String)
  case removeOrphanRuntimeDirectory(id: String)
}

/// Compares what should exist (rows) with what does (VM processes, volumes, runtime folders).
public enum ReconcilePlanner {
  static let liveStatuses: Set<String> = ["running", "paused"]

  public static func plan(
    rows: [RowState], liveVMs: [String: Int32], volumes: [String], runtimeDirectories: [String],
    inFlight: Set<String> = []
  ) -> [ReconcileAction] {
    var actions: [ReconcileAction] = []
    let rowsById = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    for row in rows where !inFlight.contains(row.id) {
      switch row.status {
      case "creating":
        actions.append(.abandonCreate(id: row.id))
      case "stopping":
        // Not busy, so no stop is running: one was interrupted.
        actions.append(.finishStop(id: row.id, pid: liveVMs[row.id]))
      case _ where liveStatuses.contains(row.status):
        if liveVMs[row.id] != nil {
          actions.append(.adopt(id: row.id))
        } else {
          actions.append(.markError(id: row.id, reason: "the VM process is gone"))
        }
      default:
        // stopped or error: nothing should run.
        if let pid = liveVMs[row.id] { actions.append(.killOrphanVM(id: row.id, pid: pid)) }
      }
    }
    for (id, pid) in liveVMs.sorted(by: { $0.key < $1.key })
    where rowsById[id] == nil && !inFlight.contains(id) {
      actions.append(.killOrphanVM(id: id, pid: pid))
    }
    for name in volumes {
      guard let id = VolumeNames.sandboxId(fromVolume: name) else { continue }
      if rowsById[id] == nil && !inFlight.contains(id) {
        actions.append(.removeOrphanVolume(name: name))
      }
    }
    for id in runtimeDirectories where rowsById[id] == nil && !inFlight.contains(id) {
      actions.append(.removeOrphanRuntimeDirectory(id: id))
    }
    return actions
  }
}

/// What a reconcile (or `POST /api/system/cleanup`) changed.
public struct ReconcileReport: Codable, Sendable {
  public var adopted: [String] = []
  public var markedError: [String] = []
  public var abandonedCreates: [String] = []
  public var finishedStops: [String] = []
  public var killedProcesses: [Int32] = []
  public var removedVolumes: [String] = []
  public var removedDirectories: [String] = []
  public var removedSnapshotFiles: [String] = []
  /// TAP devices, firewall rules and address leases no sandbox owns.
  public var removedNetwork: [String] = []

  public var isEmpty: Bool {
    adopted.isEmpty && markedError.isEmpty && abandonedCreates.isEmpty && finishedStops.isEmpty
      && killedProcesses.isEmpty
      && removedVolumes.isEmpty && removedDirectories.isEmpty && removedSnapshotFiles.isEmpty
      && removedNetwork.isEmpty
  }
}

extension SandboxService {
  /// Makes the host match the database (see `ReconcilePlanner`). Sandboxes in the middle of
  /// an operation are left alone.
  @discardableResult
  public func reconcile() async -> ReconcileReport {
    var report = ReconcileReport()
    // Busy first, then the rows: a row read after is never older than what `busy` says.
    let busy = inFlight.union(await locks.held)
    let rows: [SandboxRecord]
    do { rows = try database.sandboxes() } catch {
      logger.error("reconcile: cannot read sandboxes: \(error)")
      return report
    }
    var live: [String: Int32] = [:]
    for vm in drivers.vmm.discover() { live[vm.sandboxId] = vm.pid }
    let volumes = (try? await drivers.volumes.list()) ?? []
    let directories =
      ((try? FileManager.default.contentsOfDirectory(atPath: config.sandboxesDir)) ?? [])
      .filter { Identifier.isValid($0) }
    let actions = ReconcilePlanner.plan(
      rows: rows.map { RowState(id: $0.id, status: $0.status) }, liveVMs: live, volumes: volumes,
      runtimeDirectories: directories, inFlight: busy)
    let byId = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    for action in actions {
      await perform(action, rows: byId, live: live, into: &report)
    }
    report.removedSnapshotFiles = collectRetiredSnapshots()
    report.removedVolumes += await collectVolumeGarbage()
    report.removedSnapshotFiles += removeOrphanSnapshotFiles()
    await reconcileGuestServices()
    report.removedNetwork = await drivers.network.removeOrphans(inUse: { prefix in
      await self.knowsSandbox(startingWith: prefix)
    })
    if !report.isEmpty {
      logger.info(
        "reconciled",
        metadata: [
          "adopted": "\(report.adopted.count)", "markedError": "\(report.markedError.count)",
          "abandoned": "\(report.abandonedCreates.count)",
          "killed": "\(report.killedProcesses.count)",
          "volumes": "\(report.removedVolumes.count)",
        ])
    }
    return report
  }

  /// Takes over a live VM this process did not start (after a manager restart): its network
  /// allocation and console relay come back, and a VM a snapshot left paused when the manager
  /// died runs again. False when this process runs it already.
  func adopt(_ row: SandboxRecord, pid: Int32) async throws -> Bool {
    let id = row.id
    let runtime = Self.runtime(row)
    var handle =
      runtime.vm ?? VMHandle(sandboxId: id, pid: pid, runtimeDirectory: runtimeDirectory(id))
    guard !(attached.contains(id) && handle.pid == pid) else { return false }
    handle.pid = pid
    handle.runtimeDirectory = runtimeDirectory(id)
    if let network = runtime.network {
      await drivers.network.adopt(sandboxId: id, attachment: network)
    }
    await drivers.vmm.reattach(handle)
    if Self.status(row) == .running, (try? await drivers.vmm.isExecuting(handle)) == false {
      logger.warning(
        "adopted a paused VM of a running sandbox: resuming it", metadata: ["sandbox": "\(id)"])
      try? await drivers.vmm.resume(handle)
    }
    attached.insert(id)
    try updateRuntime(id) { $0.vm = handle }
    return true
  }

  /// Carries out one repair. Each one that changes a sandbox re-checks, under its lock, that
  /// the row is as planned and no operation is in flight on it.
  func perform(
    _ action: ReconcileAction, rows byId: [String: SandboxRecord], live: [String: Int32],
    into report: inout ReconcileReport
  ) async {
    switch action {
    case .adopt(let id):
      guard let row = byId[id], let pid = live[id] else { return }
      let adopted = await underLockIfUnchanged(row) { try await adopt(row, pid: pid) }
      if adopted { report.adopted.append(id) }
    case .markError(let id, let reason):
      guard let row = byId[id] else { return }
      let marked = await underLockIfUnchanged(row) {
        let runtime = Self.runtime(row)
        if let network = runtime.network { await releaseNetwork(id, network) }
        releaseSnapshotMemory(id)
        try updateRuntime(id) {
          $0.vm = nil
          $0.network = nil
        }
        _ = try setStatus(id, .error, error: reason)
        return true
      }
      if marked {
        logger.warning("sandbox marked error: \(reason)", metadata: ["sandbox": "\(id)"])
        report.markedError.append(id)
      }
    case .abandonCreate(let id):
      guard let row = byId[id] else { return }
      // Checked again under the lock: a create that began after the plan was made is in
      // flight now, and must not be torn down.
      let abandoned = await underLockIfUnchanged(row) {
        await releaseResources(id: id, runtime: Self.runtime(row))
        _ = try? database.deleteSandbox(id: id)
        return true
      }
      if abandoned { report.abandonedCreates.append(id) }
    case .finishStop(let id, let pid):
      guard let row = byId[id] else { return }
      let finished = await underLockIfUnchanged(row) {
        var runtime = Self.runtime(row)
        if let pid {
          runtime.vm = VMHandle(sandboxId: id, pid: pid, runtimeDirectory: runtimeDirectory(id))
        }
        await stopVMProcess(id: id, runtime: runtime)
        releaseSnapshotMemory(id)
        try updateRuntime(id) {
          $0.vm = nil
          $0.network = nil
        }
        _ = try setStatus(id, .stopped)
        return true
      }
      if finished {
        if let pid { report.killedProcesses.append(pid) }
        report.finishedStops.append(id)
        logger.warning("an interrupted stop was finished", metadata: ["sandbox": "\(id)"])
      }
    case .killOrphanVM(let id, let pid):
      guard await isStillOrphan(id, planned: byId[id]) else { return }
      await drivers.vmm.kill(
        VMHandle(sandboxId: id, pid: pid, runtimeDirectory: runtimeDirectory(id)))
      report.killedProcesses.append(pid)
    case .removeOrphanVolume(let name):
      guard let id = VolumeNames.sandboxId(fromVolume: name),
        await isStillOrphan(id, planned: byId[id])
      else { return }
      try? await drivers.volumes.remove(name)
      report.removedVolumes.append(name)
    case .removeOrphanRuntimeDirectory(let id):
      guard await isStillOrphan(id, planned: byId[id]) else { return }
      FolderRemoval.removeTree(runtimeDirectory(id))
      report.removedDirectories.append(id)
    }
  }

  /// Whether what the plan saw as an orphan still is one now: no operation in flight on the
  /// sandbox and its row as planned (absent, or stopped/errored and unchanged). A create that
  /// began after the plan was made has a row or is in flight by now.
  func isStillOrphan(_ id: String, planned: SandboxRecord?) async -> Bool {
    guard !inFlight.contains(id), !(await locks.held).contains(id), !inFlight.contains(id)
    else { return false }
    let current = try? record(id)
    return current?.status == planned?.status && current?.updatedAt == planned?.updatedAt
  }

  /// Runs a repair with the sandbox's lock held (no operation runs on it meanwhile), if the
  /// row still says what the plan was made from: the plan is made across awaits, and a user's
  /// stop or start may have run since. False when it did not run or `body` said so.
  func underLockIfUnchanged(_ row: SandboxRecord, _ body: () async throws -> Bool) async -> Bool {
    guard !(await locks.held).contains(row.id), !inFlight.contains(row.id) else { return false }
    return
      (try? await withSandboxLock(row.id) {
        guard let current = try? record(row.id), current.status == row.status,
          current.updatedAt == row.updatedAt, !inFlight.contains(row.id)
        else { return false }
        return try await body()
      }) ?? false
  }

  /// Whether a sandbox whose id starts with `prefix` has a row or an operation in flight (asked
  /// just before its network leftovers would be removed: a create that began since the plan
  /// has its row by then, before it makes any TAP).
  func knowsSandbox(startingWith prefix: String) async -> Bool {
    if inFlight.contains(where: { $0.hasPrefix(prefix) }) { return true }
    if await locks.held.contains(where: { $0.hasPrefix(prefix) }) { return true }
    guard let rows = try? database.sandboxes() else { return true }  // unsure: keep
    return rows.contains { $0.id.hasPrefix(prefix) }
  }

  /// Snapshot folders (memory files) with no snapshot row.
  func removeOrphanSnapshotFiles() -> [String] {
    let known = Set(((try? database.snapshotIds()) ?? [])).union(snapshotsInProgress)
    let folders = (try? FileManager.default.contentsOfDirectory(atPath: config.snapshotsDir)) ?? []
    var removed: [String] = []
    for folder in folders where Identifier.isValid(folder) && !known.contains(folder) {
      try? FileManager.default.removeItem(atPath: "\(config.snapshotsDir)/\(folder)")
      removed.append(folder)
    }
    return removed
  }

  // MARK: System

  public struct SystemStats: Codable, Sendable {
    public struct Host: Codable, Sendable {
      public var cpuCount: Int
      public var cpuUsagePercent: Double
      public var load: [Double]
      public var memoryTotalBytes: Int64
      public var memoryAvailableBytes: Int64
      public var diskTotalBytes: Int64
      public var diskFreeBytes: Int64
    }
    public struct Sandboxes: Codable, Sendable {
      public var byStatus: [String: Int]
      public var total: Int
      /// creating + running + paused (+ stopping): what the limit counts.
      public var counted: Int
      public var limit: Int
    }
    public struct Storage: Codable, Sendable {
      public var kind: String
      public var poolDataPercent: Double?
      public var poolMetadataPercent: Double?
    }
    public var host: Host
    public var sandboxes: Sandboxes
    public var snapshots: Int
    public var acceleration: String
    public var storage: Storage
  }

  public func stats() async throws -> SystemStats {
    let byStatus = try database.countsByStatus()
    var complete: [String: Int] = [:]
    for status in SandboxStatus.allCases {
      complete[status.rawValue] = byStatus[status.rawValue] ?? 0
    }
    let counted = Self.countedStatuses.reduce(0) { $0 + (complete[$1.rawValue] ?? 0) }
    return SystemStats(
      host: await HostStats.sample(dataDirectory: config.dataDir),
      sandboxes: .init(
        byStatus: complete, total: complete.values.reduce(0, +), counted: counted,
        limit: config.maxSandboxes),
      snapshots: try database.countSnapshots(kind: "user"),
      acceleration: drivers.acceleration.acceleration.rawValue,
      storage: await {
        let usage = await drivers.poolUsage()
        return .init(
          kind: drivers.volumes.name, poolDataPercent: usage?.data,
          poolMetadataPercent: usage?.metadata)
      }())
  }
}

/// CPU, memory and disk of this host.
enum HostStats {
  static func sample(dataDirectory: String) async -> SandboxService.SystemStats.Host {
    let usage = await ProcStats.cpuUsagePercent()
    let memory = ProcStats.meminfo()
    var disk = statvfs()
    statvfs(dataDirectory, &disk)
    return .init(
      cpuCount: ProcessInfo.processInfo.activeProcessorCount,
      cpuUsagePercent: usage, load: ProcStats.loadAverage(),
      memoryTotalBytes: memory["MemTotal"] ?? 0,
      memoryAvailableBytes: memory["MemAvailable"] ?? 0,
      diskTotalBytes: Int64(disk.f_blocks) * Int64(disk.f_frsize),
      diskFreeBytes: Int64(disk.f_bavail) * Int64(disk.f_frsize))
  }
}
