import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierProcess
import AtelierStore
import Foundation

/// Stop, start, restart, pause, resume; idle policy and the loops that apply it.
extension SandboxService {
  func requireStatus(_ row: SandboxRecord, _ allowed: Set<SandboxStatus>, for operation: String)
    throws
  {
    let status = Self.status(row)
    guard allowed.contains(status) else {
      throw AtelierError.conflict("cannot \(operation) sandbox \(row.id): it is \(status.rawValue)")
    }
  }

  /// Graceful: the agent syncs and powers off; the VM is killed if it lingers. Disk kept.
  public func stop(_ id: String) async throws -> SandboxInfo {
    try await withSandboxLock(id) {
      let row = try record(id)
      try requireStatus(row, [.running, .paused], for: "stop")
      return try await stopLocked(row)
    }
  }

  func stopLocked(_ row: SandboxRecord) async throws -> SandboxInfo {
    let id = row.id
    let wasPaused = Self.status(row) == .paused
    _ = try setStatus(id, .stopping)
    await guestServices.stop(id)
    let runtime = Self.runtime(row)
    if let vm = runtime.vm, let network = runtime.network {
      if wasPaused { try? await drivers.vmm.resume(vm) }
      try? await AgentClient(endpoint: network.agent, key: runtime.agentKey).powerOff()
      let deadline = ContinuousClock.now + .seconds(15)
      while drivers.vmm.isRunning(vm) && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(50))
      }
      if drivers.vmm.isRunning(vm) {
        logger.warning("VM did not power off; killing it", metadata: ["sandbox": "\(id)"])
      }
    }
    await stopVMProcess(id: id, runtime: runtime)
    drivers.vmm.removeGuestMemory(runtimeDirectory: runtimeDirectory(id))
    releaseSnapshotMemory(id)
    if let volume = runtime.volume { await drivers.volumes.compact(volume) }
    try updateRuntime(id) {
      $0.vm = nil
      $0.network = nil
    }
    let stopped = try setStatus(id, .stopped)
    logger.info("sandbox stopped", metadata: ["sandbox": "\(id)"])
    return Self.info(stopped)
  }

  /// Boots again from the kept disk: same hostname, services restart, a new port forward.
  public func start(_ id: String) async throws -> SandboxInfo {
    try await withSandboxLock(id) {
      let row = try record(id)
      try requireStatus(row, [.stopped, .error], for: "start")
      return try await startLocked(row)
    }
  }

  func startLocked(_ row: SandboxRecord) async throws -> SandboxInfo {
    let id = row.id
    guard Self.runtime(row).disk.map({ FileManager.default.fileExists(atPath: $0.path) }) == true
    else {
      throw AtelierError.conflict("sandbox \(id) has no disk left to start from")
    }
    // Counts against the limit again (it did not while stopped), from now: the row says
    // `stopped` until the VM runs, and creates or other starts must not take the slot meanwhile.
    guard try remainingCapacity() > 0 else {
      throw AtelierError(.resourceExhausted, "sandbox limit reached (\(config.maxSandboxes))")
    }
    try requireFreeSpace(for: "a start")
    startsInProgress += 1
    defer { startsInProgress -= 1 }
    var undo = UndoStack()
    do {
      let runtime = Self.runtime(row)
      await stopVMProcess(id: id, runtime: runtime)
      releaseSnapshotMemory(id)
      if let volume = runtime.volume {
        await drivers.volumes.compact(volume)
        if let disk = drivers.volumes.disk(of: volume) { try updateRuntime(id) { $0.disk = disk } }
      }
      _ = try await bootVM(id, undo: &undo)
      // A booted agent starts without the sandbox's environment.
      try await pushEnvironment(id, evenIfEmpty: false)
    } catch {
      await undo.run()
      try? updateRuntime(id) {
        $0.vm = nil
        $0.network = nil
      }
      _ = try? setStatus(id, .stopped, error: "start failed: \(error)")
      throw error
    }
    let started = try setStatus(id, .running)
    touch(id)
    await startGuestServices(started)
    logger.info("sandbox started", metadata: ["sandbox": "\(id)"])
    return Self.info(started)
  }

  public func restart(_ id: String) async throws -> SandboxInfo {
    try await withSandboxLock(id) {
      let row = try record(id)
      try requireStatus(row, [.running, .paused], for: "restart")
      _ = try await stopLocked(row)
      return try await startLocked(try record(id))
    }
  }

  /// Freezes the VM in memory.
  public func pause(_ id: String) async throws -> SandboxInfo {
    try await withSandboxLock(id) {
      let row = try record(id)
      try requireStatus(row, [.running], for: "pause")
      guard let vm = Self.runtime(row).vm else { throw AtelierError(.internal, "no VM recorded") }
      do { try await drivers.vmm.pause(vm) } catch {
        throw AtelierError(.unavailable, "cannot pause sandbox \(id): \(error)")
      }
      return Self.info(try setStatus(id, .paused))
    }
  }

  /// Thaws the VM and re-syncs the guest's clock.
  public func resume(_ id: String) async throws -> SandboxInfo {
    try await withSandboxLock(id) {
      let row = try record(id)
      if Self.status(row) == .running { return Self.info(row) }
      try requireStatus(row, [.paused], for: "resume")
      let runtime = Self.runtime(row)
      guard let vm = runtime.vm, let network = runtime.network else {
        throw AtelierError(.internal, "no VM recorded")
      }
      do { try await drivers.vmm.resume(vm) } catch {
        throw AtelierError(.unavailable, "cannot resume sandbox \(id): \(error)")
      }
      _ = try? await syncGuest(
        AgentClient(endpoint: network.agent, key: runtime.agentKey), network: network,
        identity: nil)
      touch(id)
      return Self.info(try setStatus(id, .running))
    }
  }

  /// Tells the guest the time (and, after a restore, its identity, its own address and MAC on
  /// a shared network, fresh entropy, and its new key).
  @discardableResult
  func syncGuest(
    _ agent: AgentClient, network: NetworkAttachment, identity: (id: String, hostname: String)?,
    newKey: String? = nil
  ) async throws -> AgentHealth {
    var entropy: String?
    if identity != nil {
      var generator = SystemRandomNumberGenerator()
      entropy = Data((0..<64).map { _ in UInt8.random(in: 0...255, using: &generator) })
        .base64EncodedString()
    }
    let now = Date().timeIntervalSince1970
    var request = GuestResumeRequest(
      unixTimeNanos: Int64(now * 1_000_000_000), entropy: entropy, sandboxId: identity?.id,
      hostname: identity?.hostname, agentKey: newKey)
    if identity != nil, let mac = network.mac {
      request.mac = mac
      request.ipv4 = "\(network.guestIPv4)/\(network.prefixLength)"
      request.gateway = network.gateway
    }
    var started = ContinuousClock.now
    let health = try await agent.resumeGuest(request)
    // The guest sets the time it was sent, whenever it gets to it: a guest just restored or
    // resumed (its code translated again under TCG, several VMs at once) may take seconds, and
    // its clock is then that far behind. Again with the time alone until an answer comes back
    // quickly, which bounds the error by that round trip (with the key it has now).
    let current = newKey.map { AgentClient(endpoint: network.agent, key: $0) } ?? agent
    for _ in 0..<3 where ContinuousClock.now - started > .milliseconds(250) {
      started = ContinuousClock.now
      let time = GuestResumeRequest(
        unixTimeNanos: Int64(Date().timeIntervalSince1970 * 1_000_000_000))
      _ = try await current.resumeGuest(time)
    }
    return health
  }

  /// `PATCH`: the idle policy and the lifetime (from now).
  public func update(_ id: String, _ request: UpdateSandboxRequest) async throws -> SandboxInfo {
    let idle = try Self.validateIdle(timeoutSeconds: request.timeoutSeconds, onIdle: request.onIdle)
    if let lifetime = request.lifetimeSeconds {
      try Self.check("lifetimeSeconds", lifetime, in: CreateSandboxRequest.lifetimeRange)
    }
    return try await withSandboxLock(id) {
      var row = try record(id)
      if request.timeoutSeconds != nil { row.timeoutSeconds = idle.0 }
      if let onIdle = idle.1 { row.onIdle = onIdle.rawValue }
      if let lifetime = request.lifetimeSeconds {
        row.expiresAt = lifetime == 0 ? nil : Date().addingTimeInterval(Double(lifetime))
      }
      if let onExpiry = request.onExpiry { row.expiryAction = onExpiry.rawValue }
      touch(id)
      return Self.info(try save(row, from: Self.status(row)))
    }
  }

  // MARK: Idle

  /// Pauses or stops running sandboxes idle past their timeout.
  public func reapIdle() async {
    guard let rows = try? database.sandboxes(status: SandboxStatus.running.rawValue) else { return }
    let now = ContinuousClock.now
    for row in rows {
      guard let timeout = row.timeoutSeconds, timeout > 0, openConnections[row.id] == nil else {
        continue
      }
      let last = lastActivity[row.id] ?? now
      if lastActivity[row.id] == nil { lastActivity[row.id] = now }
      guard now - last >= .seconds(timeout) else { continue }
      let action = row.onIdle.flatMap(IdleAction.init(rawValue:)) ?? .pause
      logger.info(
        "sandbox idle for \(timeout) s: \(action.rawValue)", metadata: ["sandbox": "\(row.id)"])
      do {
        switch action {
        case .pause: _ = try await pause(row.id)
        case .stop: _ = try await stop(row.id)
        }
      } catch {
        logger.warning(
          "idle \(action.rawValue) failed: \(error)", metadata: ["sandbox": "\(row.id)"])
      }
    }
  }
}
