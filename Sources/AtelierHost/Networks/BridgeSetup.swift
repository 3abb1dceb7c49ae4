import AtelierCore
import Foundation
import Logging

/// The host side of bridge networking, idempotent (the manager runs it at start, `atelier init`
/// and the network unit at boot): the bridge and its address, forwarding, NAT out, and the
/// INPUT policy that lets guests reach only the host ports meant for them.
public struct BridgeSetup: Sendable {
  let bridge: String
  let bridgeIp: String
  let allowedPorts: [Int]
  let runner: any CommandRunning
  let logger: Logger

  static let inputChain = "ATELIER-INPUT"
  static let forwardChain = "ATELIER-FORWARD"

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

  /// The rules of the two chains, in order (the chains are rebuilt from these).
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
      ["-i", bridge, "-j", "ACCEPT"],
      ["-o", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
      ["-o", bridge, "-j", "DROP"],
    ]
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

  /// The steps with whether each is already in place (for `init --dry-run` and the checks).
  public func plan() async -> [(description: String, done: Bool)] {
    [
      ("bridge \(bridge)", await bridgeExists()),
      ("address \(bridgeIp)/24 on \(bridge)", await hasAddress()),
      ("IPv4 forwarding", ipForwarding()),
      // The firewall is IPv4 only: with no IPv6 on the bridge, guests have no host address
      // to reach over IPv6 (SSH and the API listen on `::` too).
      ("no IPv6 on \(bridge)", ipv6Disabled()),
      (
        "iptables \(Self.inputChain) (guests reach only \(reachableOnHost) on the host)",
        await chainMatches(Self.inputChain, inputRules, jumpFrom: "INPUT", match: ["-i", bridge])
      ),
      (
        "iptables \(Self.forwardChain) (no sandbox-to-sandbox, NAT out)",
        await chainMatches(Self.forwardChain, forwardRules, jumpFrom: "FORWARD", match: [])
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
    try await rebuild(Self.inputChain, inputRules, jumpFrom: "INPUT", match: ["-i", bridge])
    try await rebuild(Self.forwardChain, forwardRules, jumpFrom: "FORWARD", match: [])
    if !(await hasNAT()) {
      try await runner.run(Command("iptables", ["-w", "-t", "nat", "-A", "POSTROUTING"] + natRule))
    }
  }

  var natRule: [String] { ["-s", subnet, "!", "-o", bridge, "-j", "MASQUERADE"] }

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

  /// Whether the chain exists with exactly these rules and is jumped to.
  func chainMatches(_ chain: String, _ rules: [[String]], jumpFrom: String, match: [String]) async
    -> Bool
  {
    let listed = await runner.probe(Command("iptables", ["-w", "-S", chain]))
    guard listed.exitCode == 0 else { return false }
    let lines = listed.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") }
    guard lines.count == rules.count else { return false }
    for rule in rules {
      if await runner.probe(Command("iptables", ["-w", "-C", chain] + rule)).exitCode != 0 {
        return false
      }
    }
    return await runner.probe(Command("iptables", ["-w", "-C", jumpFrom] + match + ["-j", chain]))
      .exitCode == 0
  }

  func rebuild(_ chain: String, _ rules: [[String]], jumpFrom: String, match: [String]) async throws
  {
    if await chainMatches(chain, rules, jumpFrom: jumpFrom, match: match) { return }
    if await runner.probe(Command("iptables", ["-w", "-N", chain])).exitCode != 0 {
      try await runner.run("iptables", "-w", "-F", chain)
    }
    for rule in rules { try await runner.run(Command("iptables", ["-w", "-A", chain] + rule)) }
    let jump = match + ["-j", chain]
    if await runner.probe(Command("iptables", ["-w", "-C", jumpFrom] + jump)).exitCode != 0 {
      try await runner.run(Command("iptables", ["-w", "-I", jumpFrom, "1"] + jump))
    }
  }
}
