import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierProcess
import AtelierStore
import Foundation
import Logging

/// Orchestrates sandboxes: creates them (clone → network → boot or restore → agent), runs
/// their lifecycle, serves their operations, deletes them, and repairs drift between the
/// database and the host. Operations on one sandbox are serialized by `locks`.
public actor SandboxService {
  let config: Config
  let database: AtelierDatabase
  let drivers: HostDrivers
  let logger: Logger
  public let events: EventBus
  /// Tunnels for host services, one pool per running sandbox.
  let guestServices: GuestServiceTunnels
  let locks = KeyedLock()
  /// Sandboxes whose create is running in this process (the reconciler leaves them alone).
  var inFlight: Set<String> = []
  /// Snapshots being written (their files exist before their rows; clean-up leaves them be).
  var snapshotsInProgress: Set<String> = []
  /// When each sandbox last saw API, agent or terminal traffic.
  var lastActivity: [String: ContinuousClock.Instant] = [:]
  /// Open WebSocket sessions and agent requests in flight per sandbox (a sandbox with one is
  /// never idle).
  var openConnections: [String: Int] = [:]
  /// Stopped sandboxes booting again: they count against the limit before their rows do.
  var startsInProgress = 0
  /// Sandboxes whose VM this process started or took over (the reconciler adopts the others).
  var attached: Set<String> = []

  static let countedStatuses: [SandboxStatus] = [.creating, .running, .paused, .stopping]

  public init(
    config: Config, database: AtelierDatabase, drivers: HostDrivers, events: EventBus = EventBus(),
    logger: Logger
  ) {
    self.config = config
    self.database = database
    self.drivers = drivers
    self.events = events
    self.logger = logger
    self.guestServices = GuestServiceTunnels(
      services: config.guestServices, maxTunnels: config.maxTunnelsPerSandbox,
      logger: Logger(label: "atelier.guest-services"))
  }

  // MARK: Reads

  /// Sandboxes (of one status; of one owner when `ownerId` is given).
  public func list(status: String?, ownerId: String? = nil) throws -> [SandboxInfo] {
    if let status, SandboxStatus(rawValue: status) == nil {
      throw AtelierError.validation(
        "unknown status \(status); expected one of \(SandboxStatus.allCases.map(\.rawValue).joined(separator: ", "))"
      )
    }
    return try database.sandboxes(status: status, ownerId: ownerId).map(Self.info)
  }

  /// A 404 unless the sandbox exists and `requester` may act on it (its owner, or an admin):
  /// what one may not see looks the same as what does not exist.
  public func requireAccess(toSandbox id: String, _ requester: Requester) throws {
    guard let row = try database.sandbox(id: id), requester.mayAccess(ownedBy: row.ownerId) else {
      throw AtelierError.notFound("sandbox \(id) not found")
    }
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

  func runtimeDirectory(_ id: String) -> String { "\(config.sandboxesDir)/\(id)" }

  // MARK: Writes, with events

  /// Saves `row` and announces it (`sandbox.updated`, with the status it left).
  @discardableResult
  func save(_ row: SandboxRecord, from previous: SandboxStatus?) throws -> SandboxRecord {
    var row = row
    row.updatedAt = Date()
    try database.update(row)
    let event = SandboxEvent(sandbox: Self.info(row), previousStatus: previous?.rawValue)
    events.publish("sandbox.updated", event)
    return row
  }

  func setStatus(_ id: String, _ status: SandboxStatus, error: String? = nil) throws
    -> SandboxRecord
  {
    var row = try record(id)
    let previous = Self.status(row)
    row.status = status.rawValue
    row.error = error
    return try save(row, from: previous)
  }

  func updateRuntime(_ id: String, _ change: (inout SandboxRuntime) -> Void) throws {
    var row = try record(id)
    // Never an empty runtime written over one that could not be read.
    var runtime = try Self.storedRuntime(row)
    change(&runtime)
    row.runtime = Self.encode(runtime)
    try database.update(row)
  }

  /// Runs `body` holding the sandbox's operation lock.
  func withSandboxLock<T>(_ id: String, _ body: () async throws -> T) async throws -> T {
    await locks.acquire(id)
    do {
      let result = try await body()
      await locks.release(id)
      return result
    } catch {
      await locks.release(id)
      throw error
    }
  }

  // MARK: Activity

  /// Records activity on a sandbox (API calls, agent traffic, terminals).
  public func touch(_ id: String) {
    lastActivity[id] = .now
  }

  public func connectionOpened(_ id: String) {
    openConnections[id, default: 0] += 1
    touch(id)
  }

  public func connectionClosed(_ id: String) {
    openConnections[id, default: 1] -= 1
    if openConnections[id] ?? 0 <= 0 { openConnections[id] = nil }
    touch(id)
  }

  /// How many more sandboxes the limit allows now: it counts creating, running, paused and
  /// stopping ones, and starts under way. (A create checks it again in its insert.)
  func remainingCapacity() throws -> Int {
    let counted = try database.count(statuses: Self.countedStatuses.map(\.rawValue))
    return config.maxSandboxes - counted - startsInProgress
  }

  // MARK: Create

  /// A new sandbox owned by `owner` (a user id; nil for none, as before users existed).
  public func create(_ request: CreateSandboxRequest, owner: String? = nil) async throws
    -> SandboxInfo
  {
    let terms = try SandboxPolicy(request)
    if let snapshotId = request.snapshot {
      guard request.image == nil, request.vcpus == nil, request.memoryMb == nil,
        request.diskGb == nil
      else {
        throw AtelierError.validation(
          "a restore takes its image, vcpus, memory and disk from the snapshot; give only "
            + "snapshot (and network, timeoutSeconds or onIdle)")
      }
      return try await restore(
        snapshotId: snapshotId, terms: terms, network: request.network, owner: owner)
    }
    let vcpus = request.vcpus ?? CreateSandboxRequest.defaultVcpus
    let memoryMb = request.memoryMb ?? CreateSandboxRequest.defaultMemoryMb
    let limits = config.limits
    try Self.check("vcpus", vcpus, in: limits.vcpus)
    try Self.check("memoryMb", memoryMb, in: limits.memoryMb)
    if let diskGb = request.diskGb { try Self.check("diskGb", diskGb, in: limits.diskGb) }
    let policy = try resolvePolicy(request.network, over: nil)
    let imageName = request.image ?? config.defaultImage
    guard ImageName.isValid(imageName) else {
      throw AtelierError.validation("invalid image name \(imageName)")
    }
    guard let image = drivers.images.image(named: imageName) else {
      throw AtelierError.notFound(
        "image \(imageName) is not built; run `atelier images build \(imageName)`")
    }
    // The disk: what was asked, else the configured size; never smaller than the image's.
    let imageGb = Int((image.diskBytes + (1 << 30) - 1) >> 30)
    let diskGb = max(request.diskGb ?? config.diskSizeGb, imageGb)
    if let asked = request.diskGb, asked < imageGb {
      throw AtelierError.validation(
        "diskGb \(asked) is smaller than the disk of image \(imageName) (\(imageGb) GiB)")
    }
    try requireFreeSpace(for: "a create")
    let row = try reserve(
      image: imageName, vcpus: vcpus, memoryMb: memoryMb, terms: terms, snapshotId: nil,
      runtime: SandboxRuntime(
        kernel: image.kernel, imageBuild: image.buildId, diskGb: diskGb,
        agentKey: AgentKey.generate(), policy: policy), owner: owner)
    return try await build(row.id) { undo in
      let started = ContinuousClock.now
      let volumeName = VolumeNames.sandbox(row.id)
      let disk = try await cloneVolume(
        base: try await drivers.imageDisk(image), to: volumeName,
        minimumSizeBytes: UInt64(diskGb) << 30)
      undo.push { [drivers] in try? await drivers.volumes.remove(volumeName) }
      try updateRuntime(row.id) {
        $0.volume = volumeName
        $0.disk = disk
      }
      let cloned = ContinuousClock.now
      let (launched, ready) = try await bootVM(row.id, undo: &undo)
      return SpawnTimings(
        cloneMs: (cloned - started).wholeMilliseconds,
        bootMs: (launched - cloned).wholeMilliseconds,
        agentMs: (ready - launched).wholeMilliseconds, totalMs: (ready - started).wholeMilliseconds)
    }
  }

  /// The egress policy a request asks for over `inherited` (a restore's or fork's; else the
  /// default: `ATELIER_GUEST_INTERNET`, no lists of its own). A 400 names the field at fault,
  /// and lists this network mode cannot enforce are refused rather than ignored.
  func resolvePolicy(_ request: NetworkPolicyRequest?, over inherited: NetworkPolicy?) throws
    -> NetworkPolicy
  {
    let policy = try NetworkPolicy.resolve(
      request, over: inherited ?? NetworkPolicy(internet: config.guestInternet))
    if !drivers.network.enforcesDestinationLists && !(policy.allow.isEmpty && policy.deny.isEmpty) {
      throw AtelierError.validation(
        "network.allow and network.deny need bridge networking (ATELIER_NETWORK=bridge): in "
          + "\(drivers.network.name) mode every VM's connections leave as the same VM user, so "
          + "one sandbox's rules cannot be told from another's; network.internet works in every mode"
      )
    }
    return policy
  }

  static func validateIdle(timeoutSeconds: Int?, onIdle: IdleAction?) throws -> (Int?, IdleAction?)
  {
    if let timeoutSeconds {
      try check("timeoutSeconds", timeoutSeconds, in: CreateSandboxRequest.timeoutRange)
    }
    return (timeoutSeconds == 0 ? nil : timeoutSeconds, onIdle)
  }

  /// A 400 naming the field when `value` is outside `range` (the same range the API
  /// document states).
  static func check(_ field: String, _ value: Int, in range: ClosedRange<Int>) throws {
    guard range.contains(value) else {
      throw AtelierError.validation(
        "\(field) must be between \(range.lowerBound) and \(range.upperBound)")
    }
  }

  /// Inserts the `creating` row, refusing beyond the limit (one transaction, so concurrent
  /// creates cannot both take the last place).
  func reserve(
    image: String, vcpus: Int, memoryMb: Int, terms: SandboxPolicy, snapshotId: String?,
    memorySnapshotId: String? = nil, runtime: SandboxRuntime, owner: String? = nil
  ) throws -> SandboxRecord {
    let id = Identifier.make()
    let now = Date()
    let row = SandboxRecord(
      id: id, status: SandboxStatus.creating.rawValue, image: image, vcpus: vcpus,
      memoryMb: memoryMb, hostname: "sbx-\(id)", createdAt: now, updatedAt: now,
      runtime: Self.encode(runtime), timeoutSeconds: terms.idle.0,
      onIdle: terms.idle.1?.rawValue, snapshotId: snapshotId,
      expiresAt: terms.lifetimeSeconds.map { now.addingTimeInterval(Double($0)) },
      expiryAction: terms.lifetimeSeconds == nil ? nil : terms.onExpiry.rawValue,
      environment: terms.environment.isEmpty ? nil : Self.encode(terms.environment),
      memorySnapshotId: memorySnapshotId, ownerId: owner)
    guard
      try database.insert(
        row, ifCountOf: Self.countedStatuses.map(\.rawValue),
        below: config.maxSandboxes - startsInProgress)  // the count, in the same transaction
    else {
      throw AtelierError(
        .resourceExhausted,
        "sandbox limit reached (\(config.maxSandboxes)); delete or stop one first")
    }
    inFlight.insert(id)
    let event = SandboxEvent(sandbox: Self.info(row), previousStatus: nil)
    events.publish("sandbox.created", event)
    return row
  }

  /// Runs the steps of a create; on failure undoes them in reverse and removes the row, so
  /// nothing is left behind.
  func build(_ id: String, _ steps: (inout UndoStack) async throws -> SpawnTimings) async throws
    -> SandboxInfo
  {
    defer { inFlight.remove(id) }
    var undo = UndoStack()
    do {
      let timings = try await steps(&undo)
      // Every command from the first one gets the sandbox's environment (a restore replaces
      // whatever its snapshot's agent had).
      try await pushEnvironment(id, evenIfEmpty: try record(id).snapshotId != nil)
      var row = try record(id)
      row.status = SandboxStatus.running.rawValue
      row.timings = Self.encode(timings)
      row = try save(row, from: .creating)
      touch(id)
      await startGuestServices(row)
      logger.info(
        "sandbox running", metadata: ["sandbox": "\(id)", "totalMs": "\(timings.totalMs)"])
      return Self.info(row)
    } catch {
      logger.warning("create failed, rolling back: \(error)", metadata: ["sandbox": "\(id)"])
      await undo.run()
      // A sandbox that never ran gives its address lease back too (a failed start keeps it).
      await drivers.network.forget(sandboxId: id)
      // Its owner's subscribers see it go.
      let owner = (try? database.sandbox(id: id))?.ownerId
      _ = try? database.deleteSandbox(id: id)
      let event = SandboxEvent(
        sandbox: SandboxInfo(
          id: id, status: .error, image: "", vcpus: 0, memoryMb: 0, hostname: "", createdAt: Date(),
          updatedAt: Date(), error: "\(error)", ownerId: owner),
        previousStatus: SandboxStatus.creating.rawValue)
      events.publish("sandbox.deleted", event)
      if let error = error as? AtelierError { throw error }
      throw AtelierError(.bootFailed, "sandbox failed to boot: \(error)")
    }
  }

  /// A new sandbox disk; a nearly full thin pool is a 429, not a boot failure.
  func cloneVolume(base: DiskAttachment, to name: String, minimumSizeBytes: UInt64 = 0)
    async throws -> DiskAttachment
  {
    do {
      return try await drivers.volumes.clone(
        base: base, to: name, minimumSizeBytes: minimumSizeBytes)
    } catch let full as ThinPoolNearlyFull {
      throw AtelierError(.resourceExhausted, "\(full)")
    }
  }

  /// The VM spec of a sandbox whose disk and kernel are in its runtime.
  func vmSpec(_ row: SandboxRecord, network: NetworkAttachment) throws -> VMSpec {
    let runtime = Self.runtime(row)
    guard let disk = runtime.disk, let kernel = runtime.kernel else {
      throw AtelierError(.internal, "sandbox \(row.id) has no disk or kernel recorded")
    }
    return VMSpec(
      sandboxId: row.id, runtimeDirectory: runtimeDirectory(row.id),
      kernelPath: drivers.vmm.bootsUncompressedKernel ? kernel.vmlinuxPath : kernel.kernelPath,
      initrdPath: kernel.initrdPath,
      kernelArguments: network.bootParameters(sandboxId: row.id, hostname: row.hostname)
        .kernelArguments,
      disk: disk, vcpus: row.vcpus, memoryMb: row.memoryMb, network: network,
      agentKeyDrive: runtime.agentKey == nil ? nil : keyDrivePath(row.id))
  }

  /// Attaches the network, boots the VM from the sandbox's disk, waits for the agent.
  /// Returns when the VMM process started and when the agent answered.
  func bootVM(_ id: String, undo: inout UndoStack) async throws -> (
    ContinuousClock.Instant, ContinuousClock.Instant
  ) {
    let network = try await attachNetwork(id, undo: &undo)
    if Self.runtime(try record(id)).agentKey == nil {
      // A sandbox from before agent keys gets one at its next boot.
      try updateRuntime(id) { $0.agentKey = AgentKey.generate() }
    }
    let row = try record(id)
    let spec = try vmSpec(row, network: network)
    let directory = spec.runtimeDirectory
    undo.push { FolderRemoval.removeTree(directory) }
    try writeKeyDrive(id, key: Self.runtime(row).agentKey)
    let vm: VMHandle
    do {
      vm = try await drivers.vmm.boot(spec)
    } catch let error as VMMError {
      logger.error(
        "VM did not start: \(error.message)\n\(error.consoleTail)", metadata: ["sandbox": "\(id)"])
      throw AtelierError(.bootFailed, "sandbox failed to boot: \(error.message)")
    }
    undo.push { [drivers] in await drivers.vmm.kill(vm) }
    try updateRuntime(id) { $0.vm = vm }
    attached.insert(id)
    let launched = ContinuousClock.now
    try await waitForAgent(id, vm: vm, network: network)
    // A booted agent listens on no guest port until told (a restore is always told: its
    // snapshot's agent may have listened on some).
    if await guestServices.isEnabled { try await configureGuestServices(id) }
    return (launched, ContinuousClock.now)
  }

  func attachNetwork(_ id: String, undo: inout UndoStack) async throws -> NetworkAttachment {
    let row = try record(id)
    // A sandbox from before policies were kept gets the default.
    let policy = Self.runtime(row).policy ?? NetworkPolicy(internet: config.guestInternet)
    var network = try await drivers.network.attach(sandboxId: id, policy: policy)
    if case .vsock(let port) = network.agentChannel {
      // Only the VMM knows where this VM's vsock will be (a socket path, a CID).
      do {
        network.agent = try drivers.vmm.vsockEndpoint(
          port: port, runtimeDirectory: runtimeDirectory(id))
      } catch {
        await releaseNetwork(id, network)
        throw error
      }
    }
    let attached = network
    undo.push { await self.releaseNetwork(id, attached) }
    try updateRuntime(id) { $0.network = network }
    return network
  }

  func waitForAgent(_ id: String, vm: VMHandle, network: NetworkAttachment) async throws {
    let agent = AgentClient(endpoint: network.agent, key: Self.runtime(try record(id)).agentKey)
    do {
      try await agent.waitUntilReady(
        sandboxId: id, timeout: .seconds(config.bootTimeoutSeconds),
        stillBooting: { [drivers] in drivers.vmm.isRunning(vm) })
    } catch let error as AgentCallError {
      let tail = drivers.vmm.consoleTail(runtimeDirectory: vm.runtimeDirectory)
      logger.error(
        "sandbox did not become ready: \(error.message)\nconsole:\n\(tail)",
        metadata: ["sandbox": "\(id)"])
      throw AtelierError(.bootFailed, "sandbox failed to boot: \(error.message)")
    }
  }

  // MARK: Delete

  public func delete(_ id: String) async throws {
    try await withSandboxLock(id) {
      let row = try record(id)
      if inFlight.contains(id) || Self.status(row) == .creating {
        throw AtelierError.conflict("sandbox \(id) is still being created")
      }
      await releaseResources(id: id, runtime: Self.runtime(row))
      try database.deleteSandbox(id: id)
      collectRetiredSnapshots()
      lastActivity[id] = nil
      let event = SandboxEvent(sandbox: Self.info(row), previousStatus: row.status)
      events.publish("sandbox.deleted", event)
      logger.info("sandbox deleted", metadata: ["sandbox": "\(id)"])
    }
    await collectVolumeGarbage()
  }

  /// Kills the VM and removes its disk, network and files. Safe on partial state.
  func releaseResources(id: String, runtime: SandboxRuntime) async {
    await guestServices.stop(id)
    await stopVMProcess(id: id, runtime: runtime)
    try? await drivers.volumes.remove(runtime.volume ?? VolumeNames.sandbox(id))
    FolderRemoval.removeTree(runtimeDirectory(id))
    await drivers.network.forget(sandboxId: id)
  }

  /// Kills the VM process(es) of a sandbox and releases its network.
  func stopVMProcess(id: String, runtime: SandboxRuntime) async {
    attached.remove(id)
    if let vm = runtime.vm { await drivers.vmm.kill(vm) }
    for observed in drivers.vmm.discover() where observed.sandboxId == id {
      await drivers.vmm.kill(
        VMHandle(sandboxId: id, pid: observed.pid, runtimeDirectory: runtimeDirectory(id)))
    }
    if let network = runtime.network {
      await releaseNetwork(id, network)
    }
  }

  /// Gives back what a network attachment holds: the provider's part (ports, TAP) and the
  /// loopback forwarders into the guest's vsock.
  func releaseNetwork(_ id: String, _ network: NetworkAttachment) async {
    await drivers.network.release(sandboxId: id, attachment: network)
    if let (target, _) = network.agent.vsockTarget { VsockForwarders.shared.stopAll(target) }
  }

  // MARK: Exec and agent access

  public func exec(_ id: String, _ request: ExecRequest) async throws -> ExecResult {
    if let problem = request.validationProblem { throw AtelierError.validation(problem) }
    let agent = try await agentClient(id)
    // Running is activity: a long command must not see its sandbox paused as idle.
    connectionOpened(id)
    defer { connectionClosed(id) }
    do {
      return try await agent.exec(request)
    } catch let error as AgentCallError {
      throw Self.map(error, id: id)
    }
  }

  /// Where the agent of a running sandbox answers. A paused sandbox is resumed first
  /// (transparently); any other status is a 409.
  public func agentEndpoint(_ id: String) async throws -> AgentEndpoint {
    touch(id)
    var row = try record(id)
    if Self.status(row) == .paused {
      _ = try await resume(id)
      row = try record(id)
    }
    guard Self.status(row) == .running, let network = Self.runtime(row).network else {
      throw AtelierError(.sandboxNotRunning, "sandbox \(id) is \(row.status), not running")
    }
    return network.agent
  }

  /// The agent of a running sandbox (resumed first if paused), with its key.
  public func agentClient(_ id: String) async throws -> AgentClient {
    let endpoint = try await agentEndpoint(id)
    return AgentClient(endpoint: endpoint, key: Self.runtime(try record(id)).agentKey)
  }

  static func map(_ error: AgentCallError, id: String) -> AtelierError {
    switch error.status {
    case 400: AtelierError.validation(error.message)
    case 404: AtelierError.notFound(error.message)
    case 409: AtelierError.conflict(error.message)
    case nil: AtelierError(.unavailable, "the agent of sandbox \(id) is unreachable")
    default:
      // The detail goes to the log, not to the client.
      {
        Logger(label: "atelier.sandboxes").error(
          "agent error \(error.code): \(error.message)", metadata: ["sandbox": "\(id)"])
        return AtelierError(.internal, "the agent of sandbox \(id) failed; see the manager log")
      }()
    }
  }
}

/// Undo steps registered as an operation goes; run in reverse when it fails.
struct UndoStack {
  private var steps: [@Sendable () async -> Void] = []
  mutating func push(_ step: @escaping @Sendable () async -> Void) {
    steps.append(step)
  }
  func run() async {
    for step in steps.reversed() { await step() }
  }
}
