import AtelierCore
import AtelierHost
import Foundation

/// What guests can reach, for `doctor` and `atelier network status`.
enum NetworkChecks {
  /// The uid user-mode VMs run as when it is not root's (the filter matches it), or nil.
  static func vmUid(_ config: Config) -> UInt32? {
    // A manager that is not root runs QEMU as itself: nothing tells its VMs apart.
    guard getuid() == 0, let user = VMUser.lookUp(config.vmUser), user.uid != 0 else {
      return nil
    }
    return user.uid
  }

  /// The user-mode egress filter this host can have, or nil when nothing can filter.
  static func userModeFirewall(_ config: Config, runner: any CommandRunning) -> UserModeFirewall? {
    vmUid(config).map { UserModeFirewall(config: config, uid: $0, runner: runner) }
  }

  /// Why user-mode guests are not filtered here.
  static func userModeUnfiltered(_ config: Config) -> String {
    let why =
      getuid() != 0
      ? "the manager is not root, so nothing can filter its VMs' connections"
      : "VMs run as root, so their connections cannot be told from the manager's"
    return "user-mode egress is not filtered: \(why); a guest with internet reaches every "
      + "address of this host (its loopback through 10.0.2.2) and of its networks"
  }

  static func egress(_ config: Config, runner: any CommandRunning) async -> Doctor.Finding {
    let deny = Prose.list(config.egressDeny, empty: "nothing")
    let defaults =
      "new sandboxes \(config.guestInternet ? "have" : "have no") internet "
      + "(ATELIER_GUEST_INTERNET); default deny: \(deny)"
    switch config.network {
    case .bridge:
      return Doctor.Finding(
        name: "guest egress", ok: true,
        detail: "bridge: each sandbox's allow and deny lists in its own iptables chain, no host "
          + "address but DNS and the allowed ports, no link-local; \(defaults)",
        fix: "")
    case .user:
      guard let firewall = userModeFirewall(config, runner: runner) else {
        // Unfiltered guests with internet by default reach this host's loopback.
        return Doctor.Finding(
          name: "guest egress", ok: !config.guestInternet,
          detail: "\(userModeUnfiltered(config)); internet: false (restrict=on) still holds; "
            + defaults,
          fix: "run the manager as root (VMs then run as a user of their own, filtered), use "
            + "ATELIER_NETWORK=bridge, or ATELIER_GUEST_INTERNET=false")
      }
      let missing = await firewall.plan().filter { !$0.done }.map(\.description)
      return Doctor.Finding(
        name: "guest egress", ok: missing.isEmpty,
        detail: missing.isEmpty
          ? "user mode: \(UserModeFirewall.chain) rejects every host address and the default "
            + "deny list for the VM user; per-sandbox lists need the bridge; \(defaults)"
          : "missing: \(missing.joined(separator: "; "))",
        fix: "atelier network setup (the manager sets it up at start too)")
    }
  }

  /// The rules of our chains and tables, as the tools print them.
  static func ruleListing(_ config: Config, runner: any CommandRunning) async -> [String] {
    var lines: [String] = []
    func section(_ title: String, _ command: Command, keep: (Substring) -> Bool) async {
      let output = await runner.probe(command)
      let kept = output.stdout.split(separator: "\n").filter(keep)
      guard output.exitCode == 0, !kept.isEmpty else { return }
      lines.append("")
      lines.append("== \(title)")
      lines += kept.map(String.init)
    }
    switch config.network {
    case .bridge:
      await section("iptables (filter)", Command("iptables", ["-w", "-S"])) {
        $0.contains("ATELIER-")
      }
      await section("iptables (nat)", Command("iptables", ["-w", "-t", "nat", "-S"])) {
        $0.contains("MASQUERADE")
      }
      await section(
        "nftables bridge \(SandboxFirewall.tableName)",
        Command("nft", ["list", "table", "bridge", SandboxFirewall.tableName])
      ) { _ in true }
    case .user:
      for binary in ["iptables", "ip6tables"] {
        await section(binary, Command(binary, ["-w", "-S"])) {
          $0.contains(UserModeFirewall.chain)
        }
      }
    }
    return lines
  }
}
