import AtelierAgentAPI
import AtelierCore
import Foundation
import Logging

/// Each sandbox on a host bridge through its own TAP device, with an address from the
/// bridge's /24 leased in the database. Sandboxes cannot reach each other: every TAP is an
/// isolated bridge port (this holds whether or not `br_netfilter` is loaded), learns nothing
/// and is flooded nothing (the bridge knows each guest's MAC from a static entry, so frames for
/// one guest never reach another). Each TAP has its firewall rules (`SandboxFirewall`:
/// anti-spoofing and the sandbox's egress policy), made with it and removed with it. The
/// agent is not on this network at all: it has a private channel (a second, restricted
/// user-mode NIC, or vsock).
public struct BridgeNetwork: NetworkProvider {
  public enum AgentAccess: Sendable { case privateInterface, vsock }

  public let name = "bridge"
  public var enforcesDestinationLists: Bool { true }
  let bridge: String
  let bridgeIp: String
  let guestIpStart: Int
  let dns: String
  /// `ATELIER_EGRESS_DENY`, on top of each sandbox's own deny list.
  let defaultDeny: [String]
  let leases: any AddressLeases
  let ports: LoopbackPortAllocator
  let agentAccess: AgentAccess
  /// Who opens the TAP devices, when that is not root (a jailed Firecracker).
  let tapOwner: (uid: UInt32, gid: UInt32)?
  let runner: any CommandRunning
  let logger: Logger

  /// The agent's private NIC: a subnet of its own, never routed anywhere.
  static let agentAddress = "10.0.3.15"

  public init(
    bridge: String, bridgeIp: String, guestIpStart: Int, dns: String,
    defaultDeny: [String] = EgressDefaults.deny, leases: any AddressLeases,
    agentAccess: AgentAccess = .privateInterface, tapOwner: (uid: UInt32, gid: UInt32)? = nil,
    ports: LoopbackPortAllocator = LoopbackPortAllocator(),
    runner: any CommandRunning, logger: Logger = Logger(label: "atelier.network.bridge")
  ) {
    self.bridge = bridge
    self.bridgeIp = bridgeIp
    self.guestIpStart = guestIpStart
    self.dns = dns
    self.defaultDeny = defaultDeny
    self.leases = leases
    self.agentAccess = agentAccess
    self.tapOwner = tapOwner
    self.ports = ports
    self.runner = runner
    self.logger = logger
  }

  var subnet: String { bridgeIp.split(separator: ".").prefix(3).joined(separator: ".") }

  /// `tap-` and the first eight characters of the id: within the 15 of an interface name.
  public static func tapName(_ sandboxId: String) -> String { "tap-\(sandboxId.prefix(8))" }

  /// Locally administered and derived from the address, so it is unique on the bridge.
  public static func mac(for address: String) -> String {
    let octets = address.split(separator: ".").compactMap { UInt8($0) }
    return (["06", "00"] + octets.map { String(format: "%02x", $0) }).joined(separator: ":")
  }

  public func attach(sandboxId: String, policy: NetworkPolicy) async throws -> NetworkAttachment {
    let bridgeHost = Int(bridgeIp.split(separator: ".").last ?? "1") ?? 1
    let octet = try await leases.lease(sandboxId: sandboxId, range: guestIpStart...254)
    guard octet != bridgeHost else { throw NetworkError("lease collides with the bridge address") }
    let address = "\(subnet).\(octet)"
    let tap = Self.tapName(sandboxId)
    let mac = Self.mac(for: address)
    try await createTap(tap, mac: mac)
    do {
      try await SandboxFirewall(
        sandboxId: sandboxId, tap: tap, mac: mac, address: address, dns: dns, policy: policy,
        defaultDeny: defaultDeny
      ).install(runner)
    } catch {
      await removeTap(tap, sandboxId: sandboxId)
      throw NetworkError("cannot set up the firewall of \(tap): \(error)")
    }
    var agent: AgentEndpoint
    var channel: NetworkAttachment.AgentChannel
    switch agentAccess {
    case .privateInterface:
      let port: Int
      do { port = try ports.reserve() } catch {
        await removeTap(tap, sandboxId: sandboxId)
        throw error
      }
      let forward = NetworkAttachment.PortForward(
        hostAddress: "127.0.0.1", hostPort: port, guestPort: AgentProtocol.port)
      agent = .tcp(host: "127.0.0.1", port: port)
      channel = .privateInterface(
        forward: forward, guestAddress: Self.agentAddress, prefixLength: 24)
    case .vsock:
      // The VMM decides the socket path or CID; the manager asks it when attaching.
      agent = .vsock(cid: 0, port: AgentProtocol.port)
      channel = .vsock(port: AgentProtocol.port)
    }
    return NetworkAttachment(
      backend: .tap(device: tap, mac: mac), guestIPv4: address, prefixLength: 24, gateway: bridgeIp,
      dns: dns, agent: agent, agentChannel: channel)
  }

  func createTap(_ tap: String, mac: String) async throws {
    var exists = await runner.probe(Command("ip", ["link", "show", "dev", tap])).exitCode == 0
    if exists && tapOwner != nil {
      // A leftover may belong to root: the jailed user could not open it.
      _ = await runner.probe(Command("ip", ["link", "del", "dev", tap]))
      exists = false
    }
    do {
      if !exists {
        var add = ["tuntap", "add", "dev", tap, "mode", "tap"]
        if let tapOwner { add += ["user", String(tapOwner.uid), "group", String(tapOwner.gid)] }
        try await runner.run(Command("ip", add))
      }
      try await runner.run("ip", "link", "set", "dev", tap, "master", bridge)
      // Isolated ports reach only non-isolated ones (the host): no sandbox-to-sandbox traffic.
      // No learning and no flooding of unknown unicast: the bridge sends this TAP only frames
      // for its own MAC (the static entry), never another guest's.
      try await runner.run(
        "bridge", "link", "set", "dev", tap, "isolated", "on", "learning", "off", "flood", "off")
      try await runner.run(
        "bridge", "fdb", "replace", mac, "dev", tap, "master", "static")
      try await runner.run("ip", "link", "set", "dev", tap, "up")
    } catch {
      _ = await runner.probe(Command("ip", ["link", "del", "dev", tap]))
      throw NetworkError("cannot set up \(tap) on \(bridge): \(error)")
    }
  }

  /// The TAP and the sandbox's firewall rules, whichever exist.
  func removeTap(_ tap: String, sandboxId: String) async {
    _ = await runner.probe(Command("ip", ["link", "del", "dev", tap]))
    await SandboxFirewall.removeAntiSpoofing(tap: tap, runner)
    await SandboxFirewall.removeEgress(sandboxId: sandboxId, runner)
  }

  public func release(sandboxId: String, attachment: NetworkAttachment) async {
    if case .tap(let device, _) = attachment.backend {
      await removeTap(device, sandboxId: sandboxId)
    }
    if case .privateInterface(let forward, _, _) = attachment.agentChannel {
      ports.release(forward.hostPort)
    }
  }

  public func adopt(sandboxId: String, attachment: NetworkAttachment) async {
    if case .privateInterface(let forward, _, _) = attachment.agentChannel {
      ports.markInUse(forward.hostPort)
    }
  }

  public func forget(sandboxId: String) async {
    await leases.releaseLease(sandboxId: sandboxId)
  }

  /// TAPs, firewall rules and leases of sandboxes the manager no longer knows (a create or
  /// restore that died with the manager, a release that failed half-way).
  public func removeOrphans(inUse: @Sendable (String) async -> Bool) async -> [String] {
    var removed: [String] = []
    let links = await runner.probe(Command("ip", ["-o", "link", "show"])).stdout
    var taps = Set(
      links.split(separator: "\n").compactMap { line -> String? in
        let fields = line.split(separator: " ")
        guard fields.count > 1 else { return nil }
        let name = fields[1].split(separator: ":").first.map(String.init) ?? ""
        let device = name.split(separator: "@").first.map(String.init) ?? name
        return device.hasPrefix("tap-") ? device : nil
      })
    taps.formUnion(await SandboxFirewall.antiSpoofedTaps(runner))
    for tap in taps.sorted() where !(await inUse(String(tap.dropFirst("tap-".count)))) {
      _ = await runner.probe(Command("ip", ["link", "del", "dev", tap]))
      await SandboxFirewall.removeAntiSpoofing(tap: tap, runner)
      removed.append(tap)
    }
    for id in await SandboxFirewall.egressChains(runner) where !(await inUse(id)) {
      await SandboxFirewall.removeEgress(sandboxId: id, runner)
      removed.append(SandboxFirewall.chain(id))
    }
    for id in await leases.leaseHolders() where !(await inUse(id)) {
      await leases.releaseLease(sandboxId: id)
      removed.append("lease of \(id)")
    }
    if !removed.isEmpty {
      logger.info("removed network leftovers: \(removed.joined(separator: ", "))")
    }
    return removed
  }
}
