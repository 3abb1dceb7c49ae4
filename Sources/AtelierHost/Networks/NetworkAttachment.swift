import AtelierAgentAPI
import Foundation

/// Where the manager reaches a guest's agent.
public enum AgentEndpoint: Codable, Sendable, Equatable {
  /// A loopback TCP port forwarded into the guest by the VMM.
  case tcp(host: String, port: Int)
  /// Firecracker-style hybrid vsock: a Unix socket on the host, `CONNECT <port>\n` first.
  case hybridVsock(path: String, port: Int)
  /// AF_VSOCK to the guest's context id (QEMU with vhost-vsock). CID 0 (never a guest's)
  /// stands for "not assigned yet": the VMM assigns one when the network is attached.
  case vsock(cid: UInt32, port: Int)
}

/// The guest's network, as the VMM must wire it.
public struct NetworkAttachment: Codable, Sendable, Equatable {
  public enum Backend: Codable, Sendable, Equatable {
    /// QEMU user-mode networking (slirp) with host port forwards to guest ports.
    case userMode(forwards: [PortForward])
    /// A TAP device on a host bridge.
    case tap(device: String, mac: String)
  }
  public struct PortForward: Codable, Sendable, Equatable {
    public var hostAddress: String
    public var hostPort: Int
    public var guestPort: Int
    public init(hostAddress: String, hostPort: Int, guestPort: Int) {
      self.hostAddress = hostAddress
      self.hostPort = hostPort
      self.guestPort = guestPort
    }
  }
  /// How the agent is reached, apart from the guest's own network.
  public enum AgentChannel: Codable, Sendable, Equatable {
    /// On eth0 itself (user-mode networking: nothing but the port forward reaches it).
    case sharedInterface
    /// A second, isolated user-mode NIC (eth1) with only the agent's port forwarded; the agent
    /// listens on that address alone, never on the shared network.
    case privateInterface(forward: PortForward, guestAddress: String, prefixLength: Int)
    /// AF_VSOCK (the agent listens on loopback and relays vsock connections to it).
    case vsock(port: Int)
  }

  public var backend: Backend
  public var guestIPv4: String
  public var prefixLength: Int
  public var gateway: String
  public var dns: String
  public var agent: AgentEndpoint
  public var agentChannel: AgentChannel
  /// The guest's own NIC reaches nothing (user mode: slirp's `restrict=on`); what it may use
  /// on the host comes through the agent. Nil is false.
  public var restricted: Bool?

  public init(
    backend: Backend, guestIPv4: String, prefixLength: Int, gateway: String, dns: String,
    agent: AgentEndpoint, agentChannel: AgentChannel = .sharedInterface, restricted: Bool? = nil
  ) {
    self.backend = backend
    self.guestIPv4 = guestIPv4
    self.prefixLength = prefixLength
    self.gateway = gateway
    self.dns = dns
    self.agent = agent
    self.agentChannel = agentChannel
    self.restricted = restricted
  }

  /// The guest's MAC on the shared network, when it has one of its own.
  public var mac: String? {
    if case .tap(_, let mac) = backend { return mac }
    return nil
  }

  /// What the guest is told at boot (kernel command line) about its network and agent.
  public func bootParameters(sandboxId: String, hostname: String) -> GuestBootParameters {
    var parameters = GuestBootParameters(
      sandboxId: sandboxId, hostname: hostname, ipv4: "\(guestIPv4)/\(prefixLength)",
      gateway: gateway, dns: dns)
    switch agentChannel {
    case .sharedInterface: break
    case .privateInterface(_, let address, let prefix):
      parameters.agentInterface = "eth1:\(address)/\(prefix)"
      parameters.listen = address
    case .vsock(let port):
      parameters.listen = "127.0.0.1"
      parameters.vsockPort = port
    }
    return parameters
  }
}
