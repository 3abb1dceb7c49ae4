import AtelierAgentAPI
import AtelierCore
import Foundation
import Synchronization

/// QEMU user-mode networking (libslirp): no root, no host devices. The guest sits alone on
/// 10.0.2.0/24 (eth0). Its agent is never on eth0: it is reached over vsock when the VMM has
/// it, else on a second, restricted user-mode NIC whose only way in is a port forward from a
/// free 127.0.0.1 port, reachable by nothing but this host.
///
/// What a guest reaches: slirp turns each guest connection into a socket of the VMM process to
/// the real destination, and maps 10.0.2.2 (and every address of 10.0.2.0/24 but the DNS one)
/// onto the host's loopback. So `internet: false` is slirp's `restrict=on` (nothing leaves;
/// guest services come through the agent's tunnel), and `internet: true` is filtered, when the
/// manager is root, by `UserModeFirewall` on the VM user's uid: no host address (which covers
/// that loopback mapping), not the default deny list. Per-sandbox lists cannot be enforced:
/// every VM's sockets belong to the same user.
///
/// Why libslirp and not passt (`-netdev stream`, `--no-map-gw`), measured here with
/// bench/network and by hand: passt (Debian 12's 2023-03 build) opens a socket to whatever
/// destination a guest's packet names, so a guest root that routes 127.0.0.1 out of eth0
/// reaches the host's loopback through it all the same — it needs the same uid firewall as
/// slirp; it reset guest bulk transfers after about 20 s under TCG, and it is one more
/// process per VM to start as the VM user, supervise, find after a restart and kill.
public struct UserModeNetwork: NetworkProvider {
  public let name = "user"
  let ports: LoopbackPortAllocator
  let agentOverVsock: Bool

  public init(ports: LoopbackPortAllocator = LoopbackPortAllocator(), agentOverVsock: Bool = false)
  {
    self.ports = ports
    self.agentOverVsock = agentOverVsock
  }

  public func attach(sandboxId: String, policy: NetworkPolicy) async throws -> NetworkAttachment {
    guard policy.allow.isEmpty, policy.deny.isEmpty else {
      throw NetworkError(
        "per-sandbox allow and deny lists need bridge networking: in user mode every VM's "
          + "connections are made by the same VM user, so one sandbox cannot be told from another")
    }
    let restricted = policy.internet ? nil : true
    if agentOverVsock {
      return NetworkAttachment(
        backend: .userMode(forwards: []), guestIPv4: "10.0.2.15", prefixLength: 24,
        gateway: "10.0.2.2", dns: "10.0.2.3", agent: .vsock(cid: 0, port: AgentProtocol.port),
        agentChannel: .vsock(port: AgentProtocol.port), restricted: restricted)
    }
    let port = try ports.reserve()
    let forward = NetworkAttachment.PortForward(
      hostAddress: "127.0.0.1", hostPort: port, guestPort: AgentProtocol.port)
    return NetworkAttachment(
      backend: .userMode(forwards: []), guestIPv4: "10.0.2.15", prefixLength: 24,
      gateway: "10.0.2.2", dns: "10.0.2.3", agent: .tcp(host: "127.0.0.1", port: port),
      agentChannel: .privateInterface(
        forward: forward, guestAddress: BridgeNetwork.agentAddress, prefixLength: 24),
      restricted: restricted)
  }

  /// The loopback ports of an attachment (eth0's forwards and the agent's).
  static func hostPorts(_ attachment: NetworkAttachment) -> [Int] {
    var found: [Int] = []
    if case .userMode(let forwards) = attachment.backend { found += forwards.map(\.hostPort) }
    if case .privateInterface(let forward, _, _) = attachment.agentChannel {
      found.append(forward.hostPort)
    }
    return found
  }

  public func release(sandboxId: String, attachment: NetworkAttachment) async {
    Self.hostPorts(attachment).forEach { ports.release($0) }
  }

  public func adopt(sandboxId: String, attachment: NetworkAttachment) async {
    Self.hostPorts(attachment).forEach { ports.markInUse($0) }
  }
}

/// Hands out free 127.0.0.1 ports. The kernel picks a port that is free now; the reservation
/// set keeps two concurrent creates from both getting it before their VMs bind it.
public final class LoopbackPortAllocator: Sendable {
  private let reserved = Mutex(Set<Int>())

  public init() {}

  public func reserve() throws -> Int {
    for _ in 0..<64 {
      let port = try Self.kernelChosenPort()
      let fresh = reserved.withLock { $0.insert(port).inserted }
      if fresh { return port }
    }
    throw NetworkError("no free loopback port")
  }

  public func release(_ port: Int) {
    _ = reserved.withLock { $0.remove(port) }
  }

  public func markInUse(_ port: Int) {
    _ = reserved.withLock { $0.insert(port) }
  }

  static func kernelChosenPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw NetworkError("socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard bound == 0 else { throw NetworkError("bind: \(String(cString: strerror(errno)))") }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return Int(UInt16(bigEndian: address.sin_port))
  }
}
