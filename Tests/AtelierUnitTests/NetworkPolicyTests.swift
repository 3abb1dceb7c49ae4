import AtelierAgentAPI
import AtelierCore
import Foundation
import Testing

@testable import AtelierHost
@testable import AtelierManager

/// The egress policy: parsing, the 400s, what a create, a restore and a fork keep, and the rules
/// each network mode makes of it.
@Suite struct NetworkPolicyTests {
  @Test func networksAreParsedStrictlyAndNormalized() {
    #expect(IPv4Network("10.1.2.3")?.description == "10.1.2.3/32")
    #expect(IPv4Network("10.1.2.3/8")?.description == "10.0.0.0/8")
    #expect(IPv4Network("0.0.0.0/0")?.description == "0.0.0.0/0")
    #expect(IPv4Network("192.168.1.255/31")?.description == "192.168.1.254/31")
    for bad in [
      "", "10.1.2", "10.1.2.3.4", "10.1.2.256", "10.1.2.3/33", "10.1.2.3/", "/8", "01.2.3.4",
      "10.1.2.3/-1", "10.1.2.3/ 8", "+1.2.3.4", "1.2.3.4/8/8", "fe80::/10", "a.b.c.d", "١.2.3.4",
    ] {
      #expect(IPv4Network(bad) == nil, "\(bad) should not parse")
    }
    let network = IPv4Network("172.16.0.0/12")!
    #expect(network.contains(IPv4Network.parseAddress("172.31.255.1")!))
    #expect(!network.contains(IPv4Network.parseAddress("172.32.0.1")!))
  }

  @Test func aBadEntryIsA400NamingTheField() throws {
    let base = NetworkPolicy(internet: true)
    #expect(throws: AtelierError.self) {
      try NetworkPolicy.resolve(.init(deny: ["10.0.0.0/8", "nope"]), over: base)
    }
    do {
      _ = try NetworkPolicy.resolve(.init(allow: ["1.2.3.4/40"]), over: base)
      Issue.record("accepted a /40")
    } catch let error as AtelierError {
      #expect(error.code == .validation)
      #expect(error.message.hasPrefix("network.allow[0]: 1.2.3.4/40 is not an IPv4 network"))
    }
    let tooMany = (0...NetworkPolicy.maxEntries).map { "10.0.\($0 / 256).\($0 % 256)" }
    #expect(throws: AtelierError.self) {
      try NetworkPolicy.resolve(.init(deny: tooMany), over: base)
    }
  }

  @Test func fieldsGivenReplaceTheInheritedOnesAndOthersAreKept() throws {
    let parent = NetworkPolicy(internet: false, allow: ["10.9.0.0/16"], deny: ["8.8.8.8/32"])
    #expect(try NetworkPolicy.resolve(nil, over: parent) == parent)
    #expect(
      try NetworkPolicy.resolve(.init(internet: true), over: parent)
        == NetworkPolicy(internet: true, allow: ["10.9.0.0/16"], deny: ["8.8.8.8/32"]))
    #expect(
      try NetworkPolicy.resolve(.init(allow: []), over: parent)
        == NetworkPolicy(internet: false, allow: [], deny: ["8.8.8.8/32"]))
  }

  @Test func configReadsTheDefaultDenyListAndInternetSwitch() throws {
    let defaults = try Config.load(environment: ["HOME": "/tmp"])
    #expect(defaults.guestInternet)
    #expect(defaults.egressDeny == EgressDefaults.deny)
    #expect(defaults.egressDeny.contains("169.254.0.0/16"))
    let set = try Config.load(environment: [
      "HOME": "/tmp", "ATELIER_GUEST_INTERNET": "false",
      "ATELIER_EGRESS_DENY": "10.0.0.0/8, 192.0.2.7",
    ])
    #expect(!set.guestInternet)
    #expect(set.egressDeny == ["10.0.0.0/8", "192.0.2.7/32"])
    #expect(
      try Config.load(environment: ["HOME": "/tmp", "ATELIER_EGRESS_DENY": ""]).egressDeny == [])
    #expect(throws: ConfigError.self) {
      try Config.load(environment: ["HOME": "/tmp", "ATELIER_EGRESS_DENY": "10.0.0.0/8,x"])
    }
    #expect(throws: ConfigError.self) {
      try Config.load(environment: ["HOME": "/tmp", "ATELIER_GUEST_INTERNET": "maybe"])
    }
  }

  // MARK: The manager

  @Test func createShowsThePolicyAndRestoresAndForksKeepIt() async throws {
    let host = try FakeHost(enforcesDestinationLists: true)
    defer { Task { await host.tearDown() } }
    let asked = NetworkPolicyRequest(internet: false, allow: ["10.9.8.7/16"], deny: ["1.1.1.1"])
    let created = try await host.service.create(CreateSandboxRequest(network: asked))
    let policy = NetworkPolicy(internet: false, allow: ["10.9.0.0/16"], deny: ["1.1.1.1/32"])
    #expect(created.network == policy)
    #expect(try await host.service.get(created.id).network == policy)
    #expect(host.network.attachedPolicies[created.id] == policy)

    let snapshot = try await host.service.snapshot(created.id, name: "s")
    let restored = try await host.service.create(CreateSandboxRequest(snapshot: snapshot.id))
    #expect(restored.network == policy)
    let opened = try await host.service.create(
      CreateSandboxRequest(snapshot: snapshot.id, network: .init(internet: true)))
    #expect(opened.network == NetworkPolicy(internet: true, allow: policy.allow, deny: policy.deny))
    #expect(host.network.attachedPolicies[opened.id]?.internet == true)

    let forks = try await host.service.fork(created.id, count: 2, network: .init(deny: []))
    #expect(
      forks.map(\.network)
        == Array(
          repeating: NetworkPolicy(
            internet: false, allow: policy.allow, deny: []), count: 2))
    // A stop and start keeps it too.
    _ = try await host.service.stop(created.id)
    let started = try await host.service.start(created.id)
    #expect(started.network == policy)
    #expect(host.network.attachedPolicies[created.id] == policy)
  }

  @Test func newSandboxesTakeTheConfiguredDefault() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    let created = try await host.service.create(CreateSandboxRequest())
    #expect(created.network == NetworkPolicy(internet: host.config.guestInternet))
    let closed = try await host.service.create(
      CreateSandboxRequest(network: .init(internet: false)))
    #expect(closed.network == NetworkPolicy(internet: false))
  }

  @Test func listsAModeCannotEnforceAreRefusedNotIgnored() async throws {
    let host = try FakeHost(enforcesDestinationLists: false)
    defer { Task { await host.tearDown() } }
    for request in [NetworkPolicyRequest(allow: ["10.0.0.0/8"]), .init(deny: ["1.2.3.4"])] {
      do {
        _ = try await host.service.create(CreateSandboxRequest(network: request))
        Issue.record("accepted \(request)")
      } catch let error as AtelierError {
        #expect(error.code == .validation)
        #expect(error.message.contains("need bridge networking"), "\(error.message)")
      }
    }
    #expect(host.leftovers() == FakeHost.nothing)
    // A bad entry is named before anything else is said.
    await #expect(
      throws: AtelierError.validation(
        "network.deny[0]: 300.1.1.1 is not an IPv4 network (a.b.c.d or a.b.c.d/n, n 0–32)")
    ) {
      _ = try await host.service.create(CreateSandboxRequest(network: .init(deny: ["300.1.1.1"])))
    }
    // A fork asking for lists is refused before the parent is paused.
    let parent = try await host.service.create(CreateSandboxRequest())
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.fork(parent.id, count: 1, network: .init(allow: ["10.0.0.0/8"]))
    }
    #expect(try await host.service.get(parent.id).status == .running)
    #expect(try await host.service.listSnapshots().isEmpty)
  }

  // MARK: The rules

  @Test func bridgeEgressRulesPutAllowFirstThenDenyThenTheDefault() {
    let open = SandboxFirewall(
      sandboxId: "abcdefghijkl", tap: "tap-abcdefgh", mac: "06:00:ac:10:00:0c",
      address: "172.16.0.12", dns: "10.255.255.53",
      policy: NetworkPolicy(internet: true, allow: ["10.1.0.0/16"], deny: ["1.1.1.1/32"]),
      defaultDeny: ["10.0.0.0/8", "1.1.1.1/32"])
    #expect(
      open.egressRules == [
        ["-d", "10.255.255.53/32", "-p", "udp", "--dport", "53", "-j", "ACCEPT"],
        ["-d", "10.255.255.53/32", "-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
        ["-d", "10.1.0.0/16", "-j", "ACCEPT"],
        ["-d", "1.1.1.1/32", "-j", "REJECT"],
        ["-d", "10.0.0.0/8", "-j", "REJECT"],
        ["-j", "ACCEPT"],
      ])
    #expect(
      open.egressScript.contains(
        "-I ATELIER-EGRESS 1 -s 172.16.0.12/32 -j ATELIER-EG-abcdefghijkl\n"))
    #expect(open.antiSpoofingScript.contains("ether saddr != 06:00:ac:10:00:0c drop"))
    #expect(
      open.antiSpoofingScript.contains(
        "arp saddr ether 06:00:ac:10:00:0c arp saddr ip 172.16.0.12 accept"))
    #expect(open.antiSpoofingScript.contains("ip saddr 172.16.0.12 accept"))
    // Without internet: no DNS, only what is allowed.
    let closed = SandboxFirewall(
      sandboxId: "abcdefghijkl", tap: "tap-abcdefgh", mac: "06:00:ac:10:00:0c",
      address: "172.16.0.12", dns: "10.255.255.53",
      policy: NetworkPolicy(internet: false, allow: ["192.0.2.0/24"]), defaultDeny: [])
    #expect(closed.egressRules == [["-d", "192.0.2.0/24", "-j", "ACCEPT"], ["-j", "REJECT"]])
  }

  @Test func theBridgeForwardsNothingLinkLocalAndSendsGuestsThroughTheirPolicy() {
    let setup = BridgeSetup(
      bridge: "br0", bridgeIp: "172.16.0.1", allowedPorts: [9418], runner: SystemCommandRunner())
    #expect(
      setup.forwardRules == [
        ["-i", "br0", "-o", "br0", "-j", "DROP"],
        ["-i", "br0", "-d", "169.254.0.0/16", "-j", "DROP"],
        ["-i", "br0", "-j", "ATELIER-EGRESS"],
        ["-o", "br0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-o", "br0", "-j", "DROP"],
      ])
    #expect(setup.inputRules.last == ["-j", "DROP"])
    #expect(setup.inputRules.contains(["-p", "tcp", "--dport", "9418", "-j", "ACCEPT"]))
    #expect(setup.bridgeTableScript.contains("type filter hook prerouting priority -300"))
    #expect(setup.bridgeTableScript.contains("add rule bridge atelier from-taps drop"))
  }

  @Test func userModeFilterRejectsHostAddressesAndTheDenyListForTheVMUser() {
    let firewall = UserModeFirewall(
      uid: 999, resolvers: ["10.255.255.53"], deny: ["10.0.0.0/8"], runner: SystemCommandRunner())
    #expect(firewall.ipv4.match == ["-m", "owner", "--uid-owner", "999"])
    #expect(firewall.ipv4.jumpFrom == "OUTPUT")
    #expect(
      firewall.rules == [
        ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ["-d", "10.255.255.53/32", "-p", "udp", "--dport", "53", "-j", "ACCEPT"],
        ["-d", "10.255.255.53/32", "-p", "tcp", "--dport", "53", "-j", "ACCEPT"],
        ["-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT"],
        ["-d", "10.0.0.0/8", "-j", "REJECT"],
        ["-j", "ACCEPT"],
      ])
    #expect(firewall.ipv6.rules.last == ["-j", "REJECT"])
  }

  @Test func userModeGuestsWithoutInternetGetARestrictedNICAndNoIPv6() async throws {
    let vmm = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes")
    for internet in [true, false] {
      let attachment = try await UserModeNetwork().attach(
        sandboxId: "abcdefabcdef", policy: NetworkPolicy(internet: internet))
      #expect(attachment.restricted == (internet ? nil : true))
      let arguments = vmm.arguments(
        for: VMSpec(
          sandboxId: "abcdefabcdef", runtimeDirectory: "/data/sandboxes/abcdefabcdef",
          kernelPath: "/k", initrdPath: "/i", kernelArguments: [],
          disk: DiskAttachment(path: "/d.qcow2", format: .qcow2), vcpus: 1, memoryMb: 256,
          network: attachment))
      let eth0 = arguments.indices.filter { arguments[$0] == "-netdev" }.map { arguments[$0 + 1] }
        .first { $0.contains("id=net0") }
      #expect(eth0?.contains("ipv6=off") == true)
      #expect(eth0?.contains("restrict=on") == !internet, "\(eth0 ?? "")")
    }
    await #expect(throws: NetworkError.self) {
      _ = try await UserModeNetwork().attach(
        sandboxId: "abcdefabcdef", policy: NetworkPolicy(internet: true, deny: ["1.2.3.4/32"]))
    }
  }
}
