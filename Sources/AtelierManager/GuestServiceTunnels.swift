import AtelierAgentAPI
import AtelierCore
import AtelierHost
import Logging
import Synchronization

/// Host services for guests (`ATELIER_GUEST_SERVICES`): for each running sandbox a small pool
/// of idle tunnels to its agent, replenished as guest connections use them, never more than
/// `maxTunnels` at once. It only uses the agent's channel, so it works the same in every
/// network mode. Each pool is a task the service starts and cancels with its sandbox.
public actor GuestServiceTunnels {
  let services: [Int: GuestService]
  let maxTunnels: Int
  /// Idle tunnels kept open per sandbox (a burst beyond waits for the next to connect).
  let poolSize: Int
  let logger: Logger
  var pools: [String: (agent: AgentClient, task: Task<Void, Never>)] = [:]

  public init(services: [GuestService], maxTunnels: Int, poolSize: Int = 4, logger: Logger) {
    self.services = Dictionary(services.map { ($0.guestPort, $0) }) { first, _ in first }
    self.maxTunnels = maxTunnels
    self.poolSize = max(1, min(poolSize, maxTunnels))
    self.logger = logger
  }

  public var isEnabled: Bool { !services.isEmpty }

  /// What the agent is told to listen on.
  public var request: GuestServicesRequest {
    GuestServicesRequest(ports: services.keys.sorted(), maxTunnels: maxTunnels)
  }

  public func isRunning(_ sandboxId: String) -> Bool { pools[sandboxId] != nil }

  /// Starts (or restarts, for a new key or endpoint) the pool of `sandboxId`.
  public func start(_ sandboxId: String, agent: AgentClient) {
    guard isEnabled else { return }
    if let existing = pools[sandboxId] {
      if existing.agent == agent { return }
      existing.task.cancel()
    }
    var logger = self.logger
    logger[metadataKey: "sandbox"] = .string(sandboxId)
    let pool = TunnelPool(
      agent: agent, services: services, size: poolSize, maxTunnels: maxTunnels, logger: logger)
    pools[sandboxId] = (agent, Task { await pool.run() })
    logger.debug("guest-service tunnels started")
  }

  public func stop(_ sandboxId: String) {
    pools.removeValue(forKey: sandboxId)?.task.cancel()
  }

  public func stopAll() {
    for pool in pools.values { pool.task.cancel() }
    pools = [:]
  }
}

/// One sandbox's tunnels: keeps `size` idle (connecting or waiting) while fewer than
/// `maxTunnels` are open in all, until cancelled.
struct TunnelPool: Sendable {
  let agent: AgentClient
  let services: [Int: GuestService]
  let size: Int
  let maxTunnels: Int
  let logger: Logger

  final class Counts: Sendable {
    struct Value {
      var idle = 0
      var active = 0
      var failures = 0
    }
    let value = Mutex(Value())
    let changed: AsyncStream<Void>.Continuation
    init(changed: AsyncStream<Void>.Continuation) { self.changed = changed }
    func update<R>(_ body: (inout Value) -> R) -> R {
      defer { changed.yield() }
      return value.withLock { body(&$0) }
    }
  }

  func run() async {
    let (changes, changed) = AsyncStream.makeStream(
      of: Void.self, bufferingPolicy: .bufferingNewest(1))
    let counts = Counts(changed: changed)
    await withDiscardingTaskGroup { group in
      var waiting = changes.makeAsyncIterator()
      while !Task.isCancelled {
        let (open, failures) = counts.value.withLock { counts -> (Bool, Int) in
          let open = counts.idle < size && counts.idle + counts.active < maxTunnels
          if open { counts.idle += 1 }
          return (open, counts.failures)
        }
        if open {
          if failures > 0 {
            // The agent did not answer the last time: back off (0.25 s doubling to 8 s).
            try? await Task.sleep(for: .milliseconds(250 << min(failures - 1, 5)))
          }
          group.addTask { await tunnel(counts) }
          continue
        }
        guard await waiting.next() != nil else { break }
      }
      group.cancelAll()
    }
  }

  func tunnel(_ counts: Counts) async {
    let claimed = Mutex(false)
    do {
      let outcome = try await AgentTunnel.run(
        agent: agent, services: services, logger: logger,
        connected: { counts.update { $0.failures = 0 } },
        opened: { port in
          claimed.withLock { $0 = true }
          counts.update {
            $0.idle -= 1
            $0.active += 1
          }
          logger.debug("guest connection", metadata: ["port": "\(port)"])
        })
      if case .refused(let port, let reason) = outcome {
        logger.warning("guest connection refused: \(reason)", metadata: ["port": "\(port)"])
      }
    } catch {
      if !Task.isCancelled { logger.debug("tunnel to the agent failed: \(error)") }
      counts.update { $0.failures += 1 }
    }
    let wasClaimed = claimed.withLock { $0 }
    counts.update {
      if wasClaimed { $0.active -= 1 } else { $0.idle -= 1 }
    }
  }
}
