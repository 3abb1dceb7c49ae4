import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierProcess
import AtelierStore
import Foundation
import Logging

/// Orchestrates sandboxes: creates them (clone → network → boot → agent), serves their
/// operations, deletes them, and repairs drift between the database and the host.
public actor SandboxService {
  let config: Config
  let database: AtelierDatabase
  let drivers: HostDrivers
  let logger: Logger
  /// Sandboxes whose create is running in this process (the reconciler leaves them alone).
  var inFlight: Set<String> = []
  /// When each sandbox last saw API, agent or terminal traffic.
  var lastActivity: [String: ContinuousClock.Instant] = [:]

  static let countedStatuses = ["creating", "running", "paused", "stopping"]

  public init(config: Config, database: AtelierDatabase, drivers: HostDrivers, logger: Logger) {
    self.config = config
    self.database = database
    self.drivers = drivers
    self.logger = logger
  }

  // MARK: Reads

  public func list(status: String?) throws -> [SandboxInfo] {
    if let status, SandboxStatus(rawValue: status) == nil {
      throw AtelierError.validation(
        "unknown status \(status); expected one of \(SandboxStatus.allCases.map(\.rawValue).joined(separator: ", "))"
      )
    }
    return try database.sandboxes(status: status).map(Self.info)
  }

  public func get(_ id: String) throws -> SandboxInfo {
    try Self.info(record(id))
  }

  func record(_ id: String) throws -> SandboxRecord {
    guard let record = try database.sandbox(id: id) else {
      throw AtelierError.notFound("sandbox \(id) not found")
    }
    return record
  }

  static func info(_ record: SandboxRecord) -> SandboxInfo {
    SandboxInfo(
      id: record.id, status: SandboxStatus(rawValue: record.status) ?? .error,
      image: record.image, vcpus: record.vcpus, memoryMb: record.memoryMb,
      hostname: record.hostname, createdAt: record.createdAt, updatedAt: record.updatedAt,
      timings: record.timings.flatMap {
        try? JSONDecoder().decode(SpawnTimings.self, from: Data($0.utf8))
      },
      error: record.error)
  }

  static func runtime(_ record: SandboxRecord) -> SandboxRuntime {
    record.runtime.flatMap { try? JSONDecoder().decode(SandboxRuntime.self, from: Data($0.utf8)) }
      ?? SandboxRuntime()
  }

  static func encode<T: Encodable>(_ value: T) -> String {
    String(decoding: (try? JSONEncoder().encode(value)) ?? Data(), as: UTF8.self)
  }

  func runtimeDirectory(_ id: String) -> String { "\(config.sandboxesDir)/\(id)" }

  // MARK: Create

  public func create(_ request: CreateSandboxRequest) async throws -> SandboxInfo {
    let vcpus = request.vcpus ?? 1
    let memoryMb = request.memoryMb ?? 256
    guard CreateSandboxRequest.vcpuRange.contains(vcpus) else {
      throw AtelierError.validation("vcpus must be between 1 and 8")
    }
    guard CreateSandboxRequest.memoryRange.contains(memoryMb) else {
      throw AtelierError.validation("memoryMb must be between 128 and 16384")
    }
    let imageName = request.image ?? config.defaultImage
    guard ImageName.isValid(imageName) else {
      throw AtelierError.validation("invalid image name \(imageName)")
    }
    guard let image = drivers.images.image(named: imageName) else {
      throw AtelierError.notFound(
        "image \(imageName) is not built; run `atelier images build \(imageName)`")
    }

    let id = Identifier.make()
    let now = Date()
    let row = SandboxRecord(
      id: id, status: SandboxStatus.creating.rawValue, image: imageName, vcpus: vcpus,
      memoryMb: memoryMb, hostname: "sbx-\(id)", createdAt: now, updatedAt: now,
      runtime: Self.encode(SandboxRuntime(kernel: image.kernel, imageBuild: image.buildId)))
    guard
      try database.insert(row, ifCountOf: Self.countedStatuses, below: config.maxSandboxes)
    else {
      throw AtelierError(
        .resourceExhausted, "sandbox limit reached (\(config.maxSandboxes)); delete one first")
    }
    inFlight.insert(id)
    defer { inFlight.remove(id) }
    var log = logger
    log[metadataKey: "sandbox"] = .string(id)
    log.info("creating sandbox", metadata: ["image": "\(imageName)", "build": "\(image.buildId)"])

    var undo = UndoStack()
    let started = ContinuousClock.now
    var runtime = Self.runtime(row)
    do {
      let volumeName = VolumeNames.sandbox(id)
      let disk = try await drivers.volumes.clone(base: image.disk, to: volumeName)
      undo.push("remove volume") { [drivers] in try? await drivers.volumes.remove(volumeName) }
      runtime.volume = volumeName
      runtime.disk = disk
      let cloned = ContinuousClock.now

      let network = try await drivers.network.attach(sandboxId: id)
      undo.push("release network") { [drivers] in
        await drivers.network.release(sandboxId: id, attachment: network)
      }
      runtime.network = network

      let directory = runtimeDirectory(id)
      undo.push("remove runtime directory") {
        try? FileManager.default.removeItem(atPath: directory)
      }
      let spec = VMSpec(
        sandboxId: id, runtimeDirectory: directory, kernelPath: image.kernel.kernelPath,
        initrdPath: image.kernel.initrdPath,
        kernelArguments: GuestBootParameters(
          sandboxId: id, hostname: row.hostname,
          ipv4: "\(network.guestIPv4)/\(network.prefixLength)", gateway: network.gateway,
          dns: network.dns
        ).kernelArguments,
        disk: disk, vcpus: vcpus, memoryMb: memoryMb, network: network)
      let vm: VMHandle
      do {
        vm = try await drivers.vmm.boot(spec)
      } catch let error as VMMError {
        log.error("VM did not start: \(error.message)\n\(error.consoleTail)")
        throw AtelierError(.bootFailed, "sandbox failed to boot: \(error.message)")
      }
      undo.push("kill VM") { [drivers] in await drivers.vmm.kill(vm) }
      runtime.vm = vm
      var saved = row
      saved.runtime = Self.encode(runtime)
      try database.update(saved)
      let launched = ContinuousClock.now

      let agent = AgentClient(endpoint: network.agent)
      do {
        try await agent.waitUntilReady(
          sandboxId: id, timeout: .seconds(config.bootTimeoutSeconds),
          stillBooting: { [drivers] in drivers.vmm.isRunning(vm) })
      } catch let error as AgentCallError {
        let tail = drivers.vmm.consoleTail(runtimeDirectory: directory)
        log.error("sandbox did not become ready: \(error.message)\nconsole:\n\(tail)")
        throw AtelierError(.bootFailed, "sandbox failed to boot: \(error.message)")
      }
      let ready = ContinuousClock.now

      let timings = SpawnTimings(
        cloneMs: (cloned - started).wholeMilliseconds,
        bootMs: (launched - cloned).wholeMilliseconds,
        agentMs: (ready - launched).wholeMilliseconds,
        totalMs: (ready - started).wholeMilliseconds)
      saved.status = SandboxStatus.running.rawValue
      saved.timings = Self.encode(timings)
      saved.updatedAt = Date()
      try database.update(saved)
      log.info("sandbox running", metadata: ["totalMs": "\(timings.totalMs)"])
      return Self.info(saved)
    } catch {
      log.warning("create failed, rolling back: \(error)")
      await undo.run()
      _ = try? database.deleteSandbox(id: id)
      if let error = error as? AtelierError { throw error }
      throw AtelierError(.bootFailed, "sandbox failed to boot: \(error)")
    }
  }

  // MARK: Delete

  public func delete(_ id: String) async throws {
    let row = try record(id)
    if inFlight.contains(id) || row.status == SandboxStatus.creating.rawValue {
      throw AtelierError.conflict("sandbox \(id) is still being created")
    }
    await releaseResources(id: id, runtime: Self.runtime(row))
    try database.deleteSandbox(id: id)
    logger.info("sandbox deleted", metadata: ["sandbox": "\(id)"])
  }

  /// Kills the VM and removes its disk, network and files. Safe on partial state.
  func releaseResources(id: String, runtime: SandboxRuntime) async {
    if let vm = runtime.vm {
      await drivers.vmm.kill(vm)
    }
    for observed in drivers.vmm.discover() where observed.sandboxId == id {
      await drivers.vmm.kill(
        VMHandle(sandboxId: id, pid: observed.pid, runtimeDirectory: runtimeDirectory(id)))
    }
    if let network = runtime.network {
      await drivers.network.release(sandboxId: id, attachment: network)
    }
    try? await drivers.volumes.remove(runtime.volume ?? VolumeNames.sandbox(id))
    try? FileManager.default.removeItem(atPath: runtimeDirectory(id))
  }

  // MARK: Exec

  public func exec(_ id: String, _ request: ExecRequest) async throws -> ExecResult {
    if let problem = request.validationProblem { throw AtelierError.validation(problem) }
    let agent = try runningAgent(id)
    do {
      return try await agent.exec(request)
    } catch let error as AgentCallError {
      throw Self.map(error, id: id)
    }
  }

  /// Records activity on a sandbox (API calls, agent traffic, terminals).
  public func touch(_ id: String) {
    lastActivity[id] = .now
  }

  /// Where the agent of a running sandbox answers; 409 when it is not running.
  public func agentEndpoint(_ id: String) throws -> AgentEndpoint {
    try runningAgent(id).endpoint
  }

  func runningAgent(_ id: String) throws -> AgentClient {
    let row = try record(id)
    guard row.status == SandboxStatus.running.rawValue,
      let network = Self.runtime(row).network
    else {
      throw AtelierError(.sandboxNotRunning, "sandbox \(id) is \(row.status), not running")
    }
    return AgentClient(endpoint: network.agent)
  }

  static func map(_ error: AgentCallError, id: String) -> AtelierError {
    switch error.status {
    case 400: AtelierError.validation(error.message)
    case 404: AtelierError.notFound(error.message)
    case 409: AtelierError.conflict(error.message)
    case nil: AtelierError(.unavailable, "the agent of sandbox \(id) is unreachable")
    default: AtelierError(.internal, "agent error \(error.code): \(error.message)")
    }
  }

  // MARK: Reconcile

  public struct ReconcileReport: Codable, Sendable {
    public var adopted: [String] = []
    public var markedError: [String] = []
    public var abandonedCreates: [String] = []
    public var killedProcesses: [Int32] = []
    public var removedVolumes: [String] = []
    public var removedDirectories: [String] = []
  }

  /// Makes the host match the database (see `ReconcilePlanner`).
  @discardableResult
  public func reconcile() async -> ReconcileReport {
    var report = ReconcileReport()
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
      runtimeDirectories: directories, inFlight: inFlight)
    let byId = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    for action in actions {
      switch action {
      case .adopt(let id):
        guard var row = byId[id] else { continue }
        var runtime = Self.runtime(row)
        if let pid = live[id] {
          runtime.vm = VMHandle(sandboxId: id, pid: pid, runtimeDirectory: runtimeDirectory(id))
        }
        if let network = runtime.network {
          await drivers.network.adopt(sandboxId: id, attachment: network)
        }
        row.runtime = Self.encode(runtime)
        try? database.update(row)
        report.adopted.append(id)
      case .markError(let id, let reason):
        guard var row = byId[id] else { continue }
        row.status = SandboxStatus.error.rawValue
        row.error = reason
        row.updatedAt = Date()
        try? database.update(row)
        if let network = Self.runtime(row).network {
          await drivers.network.release(sandboxId: id, attachment: network)
        }
        report.markedError.append(id)
      case .abandonCreate(let id):
        guard let row = byId[id] else { continue }
        await releaseResources(id: id, runtime: Self.runtime(row))
        _ = try? database.deleteSandbox(id: id)
        report.abandonedCreates.append(id)
      case .killOrphanVM(let id, let pid):
        await drivers.vmm.kill(
          VMHandle(sandboxId: id, pid: pid, runtimeDirectory: runtimeDirectory(id)))
        report.killedProcesses.append(pid)
      case .removeOrphanVolume(let name):
        try? await drivers.volumes.remove(name)
        report.removedVolumes.append(name)
      case .removeOrphanRuntimeDirectory(let id):
        try? FileManager.default.removeItem(atPath: runtimeDirectory(id))
        report.removedDirectories.append(id)
      }
    }
    if !actions.isEmpty {
      logger.info("reconciled", metadata: ["actions": "\(actions.count)"])
    }
    return report
  }
}

/// Undo steps registered as a create goes; run in reverse when it fails.
struct UndoStack {
  private var steps: [(String, @Sendable () async -> Void)] = []
  mutating func push(_ name: String, _ step: @escaping @Sendable () async -> Void) {
    steps.append((name, step))
  }
  func run() async {
    for (_, step) in steps.reversed() { await step() }
  }
}
