import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierStore
import Foundation

/// The agent's key (its drive, its replacement after a restore) and what the agent is told
/// about host services.
extension SandboxService {
  func keyDrivePath(_ id: String) -> String {
    "\(runtimeDirectory(id))/\(AgentKeyDrive.fileName)"
  }

  /// Writes the key drive into the sandbox's folder (0700), readable by its owner only. The
  /// VMM attaches it read-only; the key is in no argv and not on the guest's command line.
  func writeKeyDrive(_ id: String, key: String?) throws {
    guard let key else { return }
    let directory = runtimeDirectory(id)
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    chmod(directory, 0o700)
    let path = keyDrivePath(id)
    unlink(path)
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw AtelierError(.internal, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
    defer { close(fd) }
    let bytes = AgentKeyDrive.contents(key: key)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard fchmod(fd, 0o600) == 0, written == bytes.count, fsync(fd) == 0 else {
      throw AtelierError(.internal, "cannot write \(path): \(String(cString: strerror(errno)))")
    }
  }

  /// The agent of a sandbox as its runtime records it (whatever its status).
  func recordedAgent(_ row: SandboxRecord) -> AgentClient? {
    let runtime = Self.runtime(row)
    return runtime.network.map { AgentClient(endpoint: $0.agent, key: runtime.agentKey) }
  }

  /// Tells the agent which guest ports to serve (none when no host services are set: that
  /// also closes what a snapshot's agent listened on).
  func configureGuestServices(_ id: String) async throws {
    guard let agent = recordedAgent(try record(id)) else { return }
    do {
      _ = try await agent.configureGuestServices(await guestServices.request)
    } catch let error as AgentCallError {
      throw AtelierError(.bootFailed, "the agent refused its guest services: \(error.message)")
    }
  }

  /// Opens the tunnels of a running (or paused) sandbox, with its current key.
  func startGuestServices(_ row: SandboxRecord) async {
    guard let agent = recordedAgent(row) else { return }
    await guestServices.start(row.id, agent: agent)
  }

  /// Pools for every sandbox whose agent should have one and none for the others: after a
  /// manager restart (whose VMs live on) and whenever drift is found.
  func reconcileGuestServices() async {
    guard await guestServices.isEnabled, let rows = try? database.sandboxes() else { return }
    for row in rows {
      let status = Self.status(row)
      guard status == .running || status == .paused else {
        await guestServices.stop(row.id)
        continue
      }
      guard !(await guestServices.isRunning(row.id)), !inFlight.contains(row.id) else { continue }
      if status == .running {
        do { try await configureGuestServices(row.id) } catch {
          logger.warning(
            "cannot configure guest services: \(error)", metadata: ["sandbox": "\(row.id)"])
          continue
        }
      }
      await startGuestServices(row)
    }
  }

  /// Tells a restored guest who it is now (its agent runs already: it was restored, not
  /// booted) and gives it the sandbox's own key, authenticating with the snapshot's (the memory
  /// it was restored from), so the snapshot's key opens no live sandbox. Retries until the
  /// agent answers as the new sandbox: one round trip when the guest is quick. An answer lost
  /// after the agent took the new key would leave it refusing the old one, so attempts
  /// alternate between the two.
  func announce(
    _ row: SandboxRecord, vm: VMHandle, network: NetworkAttachment, snapshotKey: String?
  ) async throws {
    let newKey = Self.runtime(row).agentKey
    let deadline = ContinuousClock.now + .seconds(config.bootTimeoutSeconds)
    var lastError = "no answer"
    var attempt = 0
    while ContinuousClock.now < deadline {
      guard drivers.vmm.isRunning(vm) else {
        throw AtelierError(.bootFailed, "the restored VM exited")
      }
      let key = attempt % 2 == 0 ? snapshotKey : newKey
      attempt += 1
      do {
        let health = try await syncGuest(
          AgentClient(endpoint: network.agent, key: key), network: network,
          identity: (row.id, row.hostname), newKey: newKey)
        if health.sandboxId == row.id { return }
        lastError = "the agent answered as \(health.sandboxId)"
      } catch {
        lastError = "\(error)"
      }
      try await Task.sleep(for: .milliseconds(10))
    }
    let tail = drivers.vmm.consoleTail(runtimeDirectory: vm.runtimeDirectory)
    logger.error(
      "restored sandbox did not answer: \(lastError)\nconsole:\n\(tail)",
      metadata: ["sandbox": "\(row.id)"])
    throw AtelierError(.bootFailed, "restored sandbox did not answer: \(lastError)")
  }
}
