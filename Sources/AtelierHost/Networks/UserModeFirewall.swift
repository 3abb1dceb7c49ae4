import AtelierCore
import Foundation
import Logging

/// The egress filter of user-mode networking, for a manager that is root and runs its VMs as
/// an unprivileged user (`ATELIER_VM_USER`). libslirp makes every guest connection a socket of
/// the VMM process, so an OUTPUT chain matching that user's uid sees them all: it lets answers
/// to connections made to the VM (the agent's loopback forward) and DNS to the resolvers
/// through, rejects every address of this host (`addrtype LOCAL`: loopback, where slirp maps
/// 10.0.2.2, and every other address the host has, now or later) and the default deny list,
/// and accepts the rest. IPv6 is refused outright (slirp runs with `ipv6=off`; this is the
/// second lock). One chain for all VMs: their sockets are the same user's, so per-sandbox
/// lists cannot be told apart here (bridge networking has them).
///
/// A manager that is not root cannot install it, and then nothing filters what a guest with
/// `internet: true` reaches — `doctor` and the README say so.
public struct UserModeFirewall: Sendable {
  public static let chain = "ATELIER-VM-OUTPUT"

  let uid: UInt32
  let resolvers: [String]
  let deny: [String]
  let runner: any CommandRunning
  let logger: Logger

  public init(
    uid: UInt32, resolvers: [String], deny: [String], runner: any CommandRunning,
    logger: Logger = Logger(label: "atelier.network.user")
  ) {
    self.uid = uid
    self.resolvers = resolvers
    self.deny = deny
    self.runner = runner
    self.logger = logger
  }

  /// For the configuration: the bridge's resolver and the one slirp forwards 10.0.2.3 to (the
  /// first nameserver of /etc/resolv.conf, which may be a loopback stub).
  public init(config: Config, uid: UInt32, runner: any CommandRunning) {
    var resolvers = [config.guestDns]
    if let slirp = Self.firstNameserver(), !resolvers.contains(slirp) { resolvers.append(slirp) }
    self.init(uid: uid, resolvers: resolvers, deny: config.egressDeny, runner: runner)
  }

  static func firstNameserver(_ path: String = "/etc/resolv.conf") -> String? {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") {
      let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      if words.count >= 2, words[0] == "nameserver",
        IPv4Network.parseAddress(words[1]) != nil
      {
        return String(words[1])
      }
    }
    return nil
  }

  var match: [String] { ["-m", "owner", "--uid-owner", String(uid)] }

  var rules: [[String]] {
    var rules: [[String]] = [
      ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    ]
    for resolver in resolvers {
      for proto in ["udp", "tcp"] {
        rules.append(["-d", "\(resolver)/32", "-p", proto, "--dport", "53", "-j", "ACCEPT"])
      }
    }
    rules.append(["-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT"])
    for network in deny { rules.append(["-d", network, "-j", "REJECT"]) }
    rules.append(["-j", "ACCEPT"])
    return rules
  }

  var ipv4: IptablesChain {
    IptablesChain(name: Self.chain, rules: rules, jumpFrom: "OUTPUT", match: match)
  }

  var ipv6: IptablesChain {
    IptablesChain(
      binary: "ip6tables", name: Self.chain,
      rules: [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-j", "REJECT"],
      ],
      jumpFrom: "OUTPUT", match: match)
  }

  static var hasIPv6: Bool { FileManager.default.fileExists(atPath: "/proc/sys/net/ipv6") }

  public func plan() async -> [(description: String, done: Bool)] {
    var steps = [
      (
        "iptables \(Self.chain) for uid \(uid) (VM connections reach no host address and not "
          + "\(deny.isEmpty ? "nothing else" : deny.joined(separator: ", ")); DNS to "
          + "\(resolvers.joined(separator: ", ")))",
        await ipv4.matches(runner)
      )
    ]
    if Self.hasIPv6 {
      steps.append(("ip6tables \(Self.chain) for uid \(uid) (no IPv6)", await ipv6.matches(runner)))
    }
    return steps
  }

  public func apply() async throws {
    try await ipv4.rebuild(runner)
    if Self.hasIPv6 { try await ipv6.rebuild(runner) }
    logger.info("user-mode egress filtered for uid \(uid)")
  }
}
