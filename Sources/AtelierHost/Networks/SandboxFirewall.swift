import AtelierCore

/// The firewall rules of one sandbox on the bridge, installed with its TAP and removed with it:
///
/// - anti-spoofing, in the nftables bridge table `atelier` at the prerouting hook (before the
///   bridge learns a source MAC or delivers a frame): the TAP may send only from its own MAC,
///   ARP only for its own MAC and IPv4 address, IPv4 only from that address; nothing else
///   (IPv6, other ethertypes). A TAP without such a chain sends nothing at all.
/// - egress, an iptables chain `ATELIER-EG-<id>` that `ATELIER-EGRESS` jumps to by source
///   address (which the anti-spoofing makes trustworthy): DNS to the configured resolver (with
///   internet), then the sandbox's `allow`, then its `deny` and the host's default deny list
///   (rejected), then everything else accepted, or rejected without internet.
///
/// The host's own addresses are not here: the bridge's INPUT chain keeps every guest from
/// them, whatever a sandbox's policy says.
public struct SandboxFirewall: Sendable {
  static let table = "atelier"
  /// The nftables bridge table holding the anti-spoofing chains.
  public static var tableName: String { table }
  static let tapMap = "taps"
  static let egressChain = "ATELIER-EGRESS"
  static let chainPrefix = "ATELIER-EG-"

  let sandboxId: String
  let tap: String
  let mac: String
  let address: String
  let dns: String
  let policy: NetworkPolicy
  let defaultDeny: [String]

  static func chain(_ sandboxId: String) -> String { chainPrefix + sandboxId }
  var chain: String { Self.chain(sandboxId) }

  /// The egress rules, in order.
  var egressRules: [[String]] {
    var rules: [[String]] = []
    if policy.internet {
      for proto in ["udp", "tcp"] {
        rules.append(["-d", "\(dns)/32", "-p", proto, "--dport", "53", "-j", "ACCEPT"])
      }
    }
    for network in policy.allow { rules.append(["-d", network, "-j", "ACCEPT"]) }
    var denied = Set<String>()
    for network in policy.deny + defaultDeny where denied.insert(network).inserted {
      rules.append(["-d", network, "-j", "REJECT"])
    }
    rules.append(["-j", policy.internet ? "ACCEPT" : "REJECT"])
    return rules
  }

  /// One `iptables-restore --noflush` transaction: the chain (created, or emptied when a
  /// leftover exists), its rules and the jump to it.
  var egressScript: String {
    var lines = ["*filter", ":\(chain) - [0:0]"]
    lines += egressRules.map { (["-A", chain] + $0).joined(separator: " ") }
    lines.append("-I \(Self.egressChain) 1 -s \(address)/32 -j \(chain)")
    lines.append("COMMIT")
    return lines.joined(separator: "\n") + "\n"
  }

  /// One `nft -f -` transaction (atomic): the TAP's chain, emptied and filled, and its entry
  /// in the map the bridge's prerouting chain dispatches on.
  var antiSpoofingScript: String {
    let rule = "add rule bridge \(Self.table) \(tap)"
    return [
      "add chain bridge \(Self.table) \(tap)",
      "flush chain bridge \(Self.table) \(tap)",
      "\(rule) ether saddr != \(mac) drop",
      "\(rule) arp htype 1 arp ptype ip arp saddr ether \(mac) arp saddr ip \(address) accept",
      "\(rule) ether type ip ip saddr \(address) accept",
      "\(rule) drop",
      "add element bridge \(Self.table) \(Self.tapMap) { \"\(tap)\" : jump \(tap) }",
    ].joined(separator: "\n") + "\n"
  }

  func install(_ runner: any CommandRunning) async throws {
    try await runner.run(Command("nft", ["-f", "-"], input: Array(antiSpoofingScript.utf8)))
    // A jump left from an earlier attach of this sandbox would come first: remove it.
    await Self.removeJumps(to: chain, runner)
    try await runner.run(
      Command("iptables-restore", ["-w", "--noflush"], input: Array(egressScript.utf8)))
  }

  /// Removes the TAP's anti-spoofing chain, whether or not it exists (one transaction: adding
  /// first makes the deletes always valid).
  static func removeAntiSpoofing(tap: String, _ runner: any CommandRunning) async {
    let script =
      [
        "add chain bridge \(table) \(tap)",
        "add element bridge \(table) \(tapMap) { \"\(tap)\" : jump \(tap) }",
        "delete element bridge \(table) \(tapMap) { \"\(tap)\" }",
        "flush chain bridge \(table) \(tap)",
        "delete chain bridge \(table) \(tap)",
      ].joined(separator: "\n") + "\n"
    _ = await runner.probe(Command("nft", ["-f", "-"], input: Array(script.utf8)))
  }

  /// Removes a sandbox's egress chain and every jump to it.
  static func removeEgress(sandboxId: String, _ runner: any CommandRunning) async {
    let chain = chain(sandboxId)
    await removeJumps(to: chain, runner)
    let script = "*filter\n:\(chain) - [0:0]\n-X \(chain)\nCOMMIT\n"
    _ = await runner.probe(
      Command("iptables-restore", ["-w", "--noflush"], input: Array(script.utf8)))
  }

  static func removeJumps(to chain: String, _ runner: any CommandRunning) async {
    let listed = await runner.probe(Command("iptables", ["-w", "-S", egressChain]))
    for line in listed.stdout.split(separator: "\n") where line.hasSuffix(" -j \(chain)") {
      let words = line.split(separator: " ").map(String.init)
      guard words.first == "-A" else { continue }
      _ = await runner.probe(Command("iptables", ["-w", "-D"] + words.dropFirst()))
    }
  }

  // MARK: What is installed (for the reconciler and `network status`)

  /// Sandbox ids that have an egress chain.
  static func egressChains(_ runner: any CommandRunning) async -> [String] {
    let listed = await runner.probe(Command("iptables", ["-w", "-S"]))
    return listed.stdout.split(separator: "\n").compactMap { line in
      guard line.hasPrefix("-N \(chainPrefix)") else { return nil }
      return String(line.dropFirst("-N \(chainPrefix)".count))
    }
  }

  /// TAP names that have an anti-spoofing chain.
  static func antiSpoofedTaps(_ runner: any CommandRunning) async -> [String] {
    let listed = await runner.probe(Command("nft", ["list", "table", "bridge", table]))
    return listed.stdout.split(separator: "\n").compactMap { line in
      let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      guard words.count >= 2, words[0] == "chain", words[1].hasPrefix("tap-") else { return nil }
      return String(words[1])
    }
  }
}
