import AtelierAgentAPI
import AtelierCore
import Synchronization

@testable import AtelierHost

/// User-mode-like networking: a loopback port per sandbox for its agent (a real free port, as
/// the fake agent listens on it), plus an address lease, as bridge networking keeps one.
final class FakeNetwork: NetworkProvider, Sendable {
  let name = "fake"
  let faults: FaultPlan
  let ports = LoopbackPortAllocator()
  private let attached = Mutex<[String: Int]>([:])
  private let leases = Mutex<Set<String>>([])
  private let policies = Mutex<[String: NetworkPolicy]>([:])

  /// Bridge-like (per-sandbox allow and deny lists enforced) or user-like (refused).
  let enforcesDestinationLists: Bool

  init(faults: FaultPlan, enforcesDestinationLists: Bool = false) {
    self.faults = faults
    self.enforcesDestinationLists = enforcesDestinationLists
  }

  /// Ports held by attached sandboxes, and sandboxes holding a lease.
  var attachedPorts: [String: Int] { attached.withLock { $0 } }
  var leased: Set<String> { leases.withLock { $0 } }
  /// The egress policy each sandbox was last attached with.
  var attachedPolicies: [String: NetworkPolicy] { policies.withLock { $0 } }

  func attach(sandboxId: String, policy: NetworkPolicy) async throws -> NetworkAttachment {
    try faults.check(.attach)
    policies.withLock { $0[sandboxId] = policy }
    let port = try ports.reserve()
    attached.withLock { $0[sandboxId] = port }
    _ = leases.withLock { $0.insert(sandboxId) }
    return NetworkAttachment(
      backend: .userMode(forwards: []), guestIPv4: "10.0.2.15", prefixLength: 24,
      gateway: "10.0.2.2", dns: "10.0.2.3", agent: .tcp(host: "127.0.0.1", port: port))
  }

  func release(sandboxId: String, attachment: NetworkAttachment) async {
    if case .tcp(_, let port) = attachment.agent { ports.release(port) }
    _ = attached.withLock { $0.removeValue(forKey: sandboxId) }
  }

  func adopt(sandboxId: String, attachment: NetworkAttachment) async {
    if case .tcp(_, let port) = attachment.agent {
      ports.markInUse(port)
      attached.withLock { $0[sandboxId] = port }
    }
  }

  func forget(sandboxId: String) async {
    _ = leases.withLock { $0.remove(sandboxId) }
  }
}
