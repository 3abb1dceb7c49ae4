import AtelierCore
import Foundation
import Logging

/// The host side of bridge networking, idempotent (the manager runs it at start, `atelier init`
/// and the network unit at boot): the bridge and its address, forwarding, NAT out, the INPUT
/// policy that lets guests reach only the host ports meant for them, the FORWARD policy (no
/// guest-to-guest, no link-local, egress per sandbox), and the nftables bridge table whose
/// per-TAP chains (`SandboxFirewall`) stop spoofing. Setting it up again never touches the
/// rules of running sandboxes.
public struct BridgeSetup: Sendable {
  let bridge: String
  let bridgeIp: String
  let allowedPorts: [Int]
  let runner: any CommandRunning
  let logger: Logger

  static let inputChain = "ATELIER-INPUT"
  static let forwardChain = "ATELIER-FORWARD"
  /// Link-local: cloud metadata (169.254.169.254) above all. Dropped for every guest, even
  /// one whose `allow` covers it.
  static let linkLocal = "169.254.0.0/16"

  public init(
    bridge: String, bridgeIp: String, allowedPorts: [Int], runner: any CommandRunning,
    logger: Logger = Logger(label: "atelier.network.setup")
  ) {
    self.bridge = bridge
    self.bridgeIp = bridgeIp
    self.allowedPorts = allowedPorts
    self.runner = runner
    self.logger = logger
  }

  /// The bridge the configuration names (`ATELIER_BRIDGE_*`).
  public init(config: Config, runner: any CommandRunning) {
    self.init(
      bridge: config.bridgeName, bridgeIp: config.bridgeIp, allowedPorts: config.bridgeAllowedPorts,
      runner: runner)
  }

  var subnet: String { bridgeIp.split(separator: ".").prefix(3).joined(separator: ".") + ".0/24" }

  /// What guests may do to the host itself: answers to what the host opened, ping, DNS and the
  /// allowed ports; nothing else (the manager API, SSH, other sandboxes' agent forwards).
  var inputRules: [[String]] {
    var rules: [[String]] = [
      ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
      ["-p", "icmp", "-j", "ACCEPT"],
      ["-p", "udp", "--dport", "53", "-j", "ACCEPT"],
      ["-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
    ]
    for port in allowedPorts.sorted() {
      rules.append(["-p", "tcp", "--dport", String(port), "-j", "ACCEPT"])
    }
    rules.append(["-j", "DROP"])
    return rules
  }

  var forwardRules: [[String]] {
    [
      // No sandbox-to-sandbox traffic through the host either (when br_netfilter is loaded).
      ["-i", bridge, "-o", bridge, "-j", "DROP"],
      ["-i", bridge, "-d", Self.linkLocal, "-j", "DROP"],
      // Each sandbox's own policy, by source address; an address with none sends nothing.
      ["-i", bridge, "-j", SandboxFirewall.egressChain],
      ["-o", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
      ["-o", bridge, "-j", "DROP"],
    ]
  }

  var input: IptablesChain {
    IptablesChain(
      name: Self.inputChain, rules: inputRules, jumpFrom: "INPUT", match: ["-i", bridge])
  }
  var forward: IptablesChain {
    IptablesChain(name: Self.forwardChain, rules: forwardRules, jumpFrom: "FORWARD", match: [])
  }

  /// The bridge table: frames from any TAP go through the TAP's own chain (a map from the
  /// interface to its chain), and a TAP with none is dropped. At the prerouting hook, so a
  /// spoofed frame is dropped before the bridge learns its source MAC.
  var bridgeTableScript: String {
    let table = "bridge \(SandboxFirewall.table)"
    return [
      "add table \(table)",
      "add map \(table) \(SandboxFirewall.tapMap) { type ifname : verdict; }",
      "add chain \(table) prerouting { type filter hook prerouting priority -300; policy accept; }",
      "flush chain \(table) prerouting",
      "add chain \(table) from-taps",
      "flush chain \(table) from-taps",
      "add rule \(table) prerouting iifname \"tap-*\" jump from-taps",
      "add rule \(table) from-taps iifname vmap @\(SandboxFirewall.tapMap)",
      "add rule \(table) from-taps drop",
    ].joined(separator: "\n") + "\n"
  }

  /// What guests may reach on the host, in words (never an empty list of ports).
  var reachableOnHost: String {
    let ports = allowedPorts.sorted().map(String.init)
    switch ports.count {
    case 0: return "ping and DNS"
    case 1: return "ping, DNS and port \(ports[0])"
    default: return "ping, DNS and ports \(ports.joined(separator: ", "))"
    }
  }

  /// The steps with whether each is already in place (for `init --dry-run`, `network status`
  /// and `doctor`).
  public func plan() async -> [(description: String, done: Bool)] {
    let spoofing = await SandboxFirewall.antiSpoofedTaps(runner).count
    let egress = await SandboxFirewall.egressChains(runner).count
    return [
      ("bridge \(bridge)", await bridgeExists()),
      ("address \(bridgeIp)/24 on \(bridge)", await hasAddress()),
      ("IPv4 forwarding", ipForwarding()),
      // The firewall is IPv4 only: with no IPv6 on the bridge, guests have no host address
      // to reach over IPv6 (SSH and the API listen on `::` too).
      ("no IPv6 on \(bridge)", ipv6Disabled()),
      (
        "iptables \(Self.inputChain) (guests reach only \(reachableOnHost) on the host)",
        await input.matches(runner)
      ),
      (
        "iptables \(Self.forwardChain) (no sandbox-to-sandbox, no link-local, NAT out)",
        await forward.matches(runner)
      ),
      (
        "iptables \(SandboxFirewall.egressChain) (each sandbox's egress policy; \(egress) "
          + "sandbox\(egress == 1 ? "" : "es") now; other sources dropped)",
        await egressChainReady()
      ),
      (
        "nftables bridge \(SandboxFirewall.table) (each TAP sends only from its own MAC and IP; "
          + "\(spoofing) TAP\(spoofing == 1 ? "" : "s") now; others dropped)",
        await bridgeTableReady()
      ),
      ("NAT for \(subnet)", await hasNAT()),
    ]
  }

  public func apply() async throws {
    if !(await bridgeExists()) {
      try await runner.run("ip", "link", "add", "name", bridge, "type", "bridge")
    }
    if !(await hasAddress()) {
      try await runner.run("ip", "addr", "add", "\(bridgeIp)/24", "dev", bridge)
    }
    if !ipv6Disabled() {
      try "1\n".write(toFile: ipv6Switch, atomically: false, encoding: .utf8)
    }
    try await runner.run("ip", "link", "set", "dev", bridge, "up")
    if !ipForwarding() {
      try "1\n".write(toFile: "/proc/sys/net/ipv4/ip_forward", atomically: false, encoding: .utf8)
    }
    try await input.rebuild(runner)
    try await ensureEgressChain()
    try await forward.rebuild(runner)
    if !(await bridgeTableReady()) {
      try await runner.run(Command("nft", ["-f", "-"], input: Array(bridgeTableScript.utf8)))
    }
    if !(await hasNAT()) {
      try await runner.run(Command("iptables", ["-w", "-t", "nat", "-A", "POSTROUTING"] + natRule))
    }
  }

  var natRule: [String] { ["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"] }

  /// `ATELIER-EGRESS` exists and ends in DROP. Its other rules are the sandboxes' jumps, kept.
  func egressChainReady() async -> Bool {
    let listed = await runner.probe(
      Command("iptables", ["-w", "-S", SandboxFirewall.egressChain]))
    let rules = listed.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") }
    return listed.exitCode == 0 && rules.last == "-A \(SandboxFirewall.egressChain) -j DROP"
  }

  func ensureEgressChain() async throws {
    let chain = SandboxFirewall.egressChain
    if await egressChainReady() { return }
    _ = await runner.probe(Command("iptables", ["-w", "-N", chain]))
    // A DROP anywhere but last would shadow the jumps after it.
    while await runner.probe(Command("iptables", ["-w", "-D", chain, "-j", "DROP"])).exitCode == 0 {
    }
    try await runner.run("iptables", "-w", "-A", chain, "-j", "DROP")
  }

  /// The table's base chains hold exactly their rules (the map and TAP chains are kept).
  func bridgeTableReady() async -> Bool {
    let table = ["bridge", SandboxFirewall.table]
    let prerouting = await runner.probe(Command("nft", ["list", "chain"] + table + ["prerouting"]))
    let fromTaps = await runner.probe(Command("nft", ["list", "chain"] + table + ["from-taps"]))
    let map = await runner.probe(
      Command("nft", ["list", "map"] + table + [SandboxFirewall.tapMap]))
    guard prerouting.exitCode == 0, fromTaps.exitCode == 0, map.exitCode == 0 else { return false }
    func rules(_ listing: String) -> [String] {
      listing.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty && !$0.hasPrefix("table ") && !$0.hasPrefix("chain ") && $0 != "}" }
    }
    return rules(prerouting.stdout) == [
      "type filter hook prerouting priority dstnat; policy accept;",
      "iifname \"tap-*\" jump from-taps",
    ] && rules(fromTaps.stdout) == ["iifname vmap @\(SandboxFirewall.tapMap)", "drop"]
  }

  func bridgeExists() async -> Bool {
    await runner.probe(Command("ip", ["link", "show", "dev", bridge])).exitCode == 0
  }

  func hasAddress() async -> Bool {
    let output = await runner.probe(Command("ip", ["-4", "addr", "show", "dev", bridge]))
    return output.stdout.contains(" \(bridgeIp)/24 ")
  }

  var ipv6Switch: String { "/proc/sys/net/ipv6/conf/\(bridge)/disable_ipv6" }

  /// True when the bridge has IPv6 turned off, or the kernel has no IPv6 at all.
  func ipv6Disabled() -> Bool {
    guard FileManager.default.fileExists(atPath: "/proc/sys/net/ipv6") else { return true }
    return (try? String(contentsOfFile: ipv6Switch, encoding: .utf8))?.hasPrefix("1") == true
  }

  func ipForwarding() -> Bool {
    (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_forward", encoding: .utf8))?.hasPrefix("1")
      == true
  }

  func hasNAT() async -> Bool {
    await runner.probe(Command("iptables", ["-w", "-t", "nat", "-C", "POSTROUTING"] + natRule))
      .exitCode == 0
  }
}
