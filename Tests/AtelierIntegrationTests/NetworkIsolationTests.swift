import AtelierCore
import AtelierProcess
import Foundation
import Testing

/// What a guest reaches, tried from inside guests, with the manager (and so every socket QEMU
/// opens for a guest) in a namespace of the test's own, linked only to a second one standing in
/// for the internet. Each "unreachable" has a positive control made with the same probe.
extension VMTests {
  @Suite(.timeLimit(.minutes(15)))
  struct NetworkIsolationTests {
    static let guestServicePort = 7000
    /// Host services in the manager's namespace: the guest service's target, one on loopback
    /// only, one on every address.
    static let serviceTarget = 7003
    static let loopbackOnly = 7001
    static let everyAddress = 7002
    static let allowedPort = 8081

    /// The manager's namespace, its internet, and servers on the host's side.
    struct Lab {
      let manager: NamespacedManager
      let internet: TestInternet
      var servers: [Int32] = []

      static func make(network: String, extra: [String: String] = [:]) async throws -> Lab {
        var environment = [
          "ATELIER_GUEST_SERVICES": "\(guestServicePort)=127.0.0.1:\(serviceTarget)"
        ]
        for (key, value) in extra { environment[key] = value }
        var internet: TestInternet?
        let manager = try await NamespacedManager(
          allowedPort: allowedPort, network: network, environment: environment,
          beforeLaunch: { internet = try await TestInternet(linkedTo: $0) })
        guard let internet else { throw TestFailure("no internet namespace") }
        var lab = Lab(manager: manager, internet: internet)
        for (address, port, banner) in [
          ("127.0.0.1", serviceTarget, "guest-service"), ("127.0.0.1", loopbackOnly, "host-lo"),
          ("0.0.0.0", everyAddress, "host-any"), (manager.bridgeIp, allowedPort, "host-allowed"),
        ] where network == "bridge" || port != allowedPort {
          lab.servers.append(
            try internet.spawnBanner(
              address: address, port: port, banner: banner, in: manager.namespace))
        }
        return lab
      }

      func tearDown() async {
        for server in servers { kill(server, SIGKILL) }
        await internet.tearDown()
        await manager.tearDown()
      }

      func create(_ network: [String: Any]? = nil) async throws -> String {
        var body: [String: Any] = [:]
        if let network { body["network"] = network }
        let created = try await manager.request("POST", "/api/sandboxes", json: body)
        guard created.status == 201, let id = created.json["id"] as? String else {
          throw TestFailure(
            "create answered \(created.status): \(created.text)\n"
              + manager.log(lines: 40))
        }
        return id
      }

      /// Every (address, port) of `addresses` × the ports the host listens on now, but `except`.
      func hostTargets(_ addresses: [String], except: Set<Int> = []) async -> [(String, Int)] {
        let ports = await TestNetwork.listeningPorts(
          namespace: manager.namespace, runner: manager)
        return addresses.flatMap { address in
          ports.subtracting(except).sorted().map { (address, $0) }
        }
      }
    }

    static func expectUnreachable(_ results: [String: ProbeResult], in id: String) {
      let reached = results.filter { $0.value.reached }.map { "\($0.key) \($0.value)" }.sorted()
      #expect(reached.isEmpty, "from \(id): \(reached.joined(separator: "\n"))")
    }

    /// Routes 127.0.0.1 out of eth0 (guest root can): what a VMM makes of a packet to the host's
    /// loopback that no gateway mapping produced.
    static let loopbackOutOfEth0 = """
      exec 2>&1; sysctl -qw net.ipv4.conf.all.route_localnet=1 net.ipv4.conf.eth0.route_localnet=1; \
      ip route add 127.0.0.1/32 via $(ip route | awk '/^default/ {print $3; exit}') dev eth0 \
      table 100 \
      && ip rule add to 127.0.0.1 lookup 100 pref 10 && ip rule del pref 0 \
      && ip rule add pref 20 lookup local && ip route get 127.0.0.1
      """

    // MARK: User mode

    @Test(
      .enabled(
        if: NamespacedManager.canRun,
        "needs root, /dev/net/tun, iptables, nft and curl for namespaces of its own"))
    func userModeGuestsReachTheInternetAndGuestServicesButNothingOnTheHost() async throws {
      let lab = try await Lab.make(network: "user")
      do { try await userMode(lab) } catch {
        Issue.record("manager log:\n\(lab.manager.log(lines: 60))")
        await lab.tearDown()
        throw error
      }
      await lab.tearDown()
    }

    func userMode(_ lab: Lab) async throws {
      let manager = lab.manager
      let a = try await lab.create()
      let b = try await lab.create()
      let closed = try await lab.create(["internet": false])
      let shown = try await manager.request("GET", "/api/sandboxes/\(closed)")
      let policy = shown.json["network"] as? [String: Any]
      #expect(policy?["internet"] as? Bool == false, "\(shown.text)")
      #expect(policy?["allow"] as? [String] == [] && policy?["deny"] as? [String] == [])
      // Per-sandbox lists cannot be told apart in user mode: refused, naming the reason.
      let refused = try await manager.request(
        "POST", "/api/sandboxes", json: ["network": ["deny": ["198.51.100.0/24"]]])
      #expect(
        refused.status == 400 && refused.text.contains("bridge networking"), "\(refused.text)")

      // Positive controls, with the same probe: the internet, and the guest service by name.
      let internet = (TestInternet.publicServer, TestInternet.port)
      let service = ("host.atelier.internal", Self.guestServicePort)
      let controls = try await TestNetwork.probe(manager, a, [internet, service])
      #expect(
        controls["\(internet.0):\(internet.1)"]?.reached(saying: "internet-ok 203.0.113.1") == true,
        "\(controls)")
      #expect(controls["\(service.0):\(service.1)"]?.reached(saying: "guest-service") == true)

      // Every port the host listens on, through every address slirp maps onto it (10.0.2.2,
      // any other address of 10.0.2.0/24 routed through it, the DNS address, IPv6's fec0::2)
      // and through the host's own address on its link.
      _ = try await manager.exec(a, "ip route add 10.0.2.77/32 via 10.0.2.2 dev eth0")
      let targets = await lab.hostTargets([
        "10.0.2.2", "10.0.2.77", "10.0.2.3", "fec0::2", TestInternet.hostAddress,
      ])
      #expect(targets.count >= 5 * 5, "\(targets)")
      Self.expectUnreachable(try await TestNetwork.probe(manager, a, targets), in: a)

      // The other sandbox's agent: its forward is not reachable from a guest (above), and from
      // the host it answers nothing without the key.
      let port = try #require(manager.agentPort(of: b))
      let keyless = try await manager.inside([
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
        "-d", #"{"command":"id"}"#, "http://127.0.0.1:\(port)/exec",
      ])
      #expect(keyless.stdoutText == "401")
      #expect(try await manager.exec(b, "echo ok").stdout == "ok\n")

      // Without internet: nothing but the guest service.
      let shut = try await TestNetwork.probe(
        manager, closed,
        [internet, service, (TestInternet.otherServer, TestInternet.port)]
          + (await lab.hostTargets(["10.0.2.2", TestInternet.hostAddress])))
      #expect(shut["\(service.0):\(service.1)"]?.reached(saying: "guest-service") == true)
      Self.expectUnreachable(
        shut.filter { $0.key != "\(service.0):\(service.1)" }, in: "\(closed) (no internet)")

      // A guest that routes 127.0.0.1 out of its NIC reaches no loopback service either.
      let rerouted = try await manager.exec(a, Self.loopbackOutOfEth0)
      #expect(rerouted.stdout.contains("via 10.0.2.2 dev eth0"), "\(rerouted.stdout)")
      Self.expectUnreachable(
        try await TestNetwork.probe(manager, a, await lab.hostTargets(["127.0.0.1"])), in: a)
      // ... while its internet still works (the control for that probe).
      #expect(try await TestNetwork.probe(manager, a, [internet]).values.first?.reached == true)

      try await expectFilterShown(manager)
    }

    // MARK: Bridge

    @Test(
      .enabled(
        if: NamespacedManager.canRun,
        "needs root, /dev/net/tun, iptables, nft and curl for namespaces of its own"))
    func bridgeGuestsFollowTheirPolicyAndReachNothingOnTheHostButAllowedPorts() async throws {
      let lab = try await Lab.make(
        network: "bridge", extra: ["ATELIER_GUEST_DNS": TestInternet.resolver])
      do { try await bridge(lab) } catch {
        Issue.record("manager log:\n\(lab.manager.log(lines: 60))")
        await lab.tearDown()
        throw error
      }
      await lab.tearDown()
    }

    func bridge(_ lab: Lab) async throws {
      let manager = lab.manager
      let internet = "\(TestInternet.publicServer):\(TestInternet.port)"
      let other = "\(TestInternet.otherServer):\(TestInternet.port)"
      let privateNet = "\(TestInternet.privateServer):\(TestInternet.port)"
      let metadata = "\(TestInternet.metadataServer):80"
      let service = "host.atelier.internal:\(Self.guestServicePort)"
      let outside: [(String, Int)] = [
        (TestInternet.publicServer, TestInternet.port),
        (TestInternet.otherServer, TestInternet.port),
        (TestInternet.privateServer, TestInternet.port), (TestInternet.metadataServer, 80),
        ("host.atelier.internal", Self.guestServicePort),
      ]
      let a = try await lab.create()
      let listed = try await lab.create([
        "deny": ["198.51.100.0/24"], "allow": ["10.99.0.0/16", "169.254.0.0/16"],
      ])
      let closed = try await lab.create(["internet": false, "allow": ["198.51.100.1"]])
      let shown = try await manager.request("GET", "/api/sandboxes/\(closed)")
      #expect(
        (shown.json["network"] as? [String: Any])?["allow"] as? [String] == ["198.51.100.1/32"])
      // The metadata server answers the host itself: what the guests do not reach is there.
      let fromHost = try await manager.inside([
        // The banner server is not HTTP: its one line is an HTTP/0.9 answer to curl.
        "curl", "-sS", "--http0.9", "--max-time", "5", "http://\(TestInternet.metadataServer)/",
      ])
      #expect(fromHost.stdoutText.hasPrefix("internet-ok"), "\(fromHost.stderrText)")

      // The default: the internet, not private networks, never link-local.
      let fromA = try await TestNetwork.probe(manager, a, outside)
      #expect(fromA[internet]?.reached(saying: "internet-ok") == true, "\(fromA)")
      #expect(fromA[other]?.reached(saying: "internet-ok") == true, "\(fromA)")
      #expect(fromA[service]?.reached(saying: "guest-service") == true, "\(fromA)")
      Self.expectUnreachable(fromA.filter { [privateNet, metadata].contains($0.key) }, in: a)
      // Its own lists: allow before the deny lists, link-local even when allowed.
      let fromListed = try await TestNetwork.probe(manager, listed, outside)
      #expect(fromListed[internet]?.reached(saying: "internet-ok") == true, "\(fromListed)")
      #expect(fromListed[privateNet]?.reached(saying: "internet-ok") == true, "\(fromListed)")
      Self.expectUnreachable(fromListed.filter { [other, metadata].contains($0.key) }, in: listed)
      // No internet: what it allows, and the guest service.
      let fromClosed = try await TestNetwork.probe(manager, closed, outside)
      #expect(fromClosed[other]?.reached(saying: "internet-ok") == true, "\(fromClosed)")
      #expect(fromClosed[service]?.reached(saying: "guest-service") == true, "\(fromClosed)")
      Self.expectUnreachable(
        fromClosed.filter { [internet, privateNet, metadata].contains($0.key) }, in: closed)

      // DNS to the configured resolver works though the default deny list covers its address;
      // without internet there is none.
      let lookup = "nslookup example.test 2>&1; echo rc=$?"
      #expect(try await manager.exec(a, lookup).stdout.contains(TestInternet.resolvedAddress))
      let noLookup = try await manager.exec(closed, lookup).stdout
      #expect(!noLookup.contains(TestInternet.resolvedAddress) && !noLookup.contains("rc=0"))

      // The host: every port it listens on, at the bridge address and at its own address on
      // its link; only the allowed port answers.
      let targets = await lab.hostTargets([manager.bridgeIp, TestInternet.hostAddress])
      for id in [a, closed] {
        var results = try await TestNetwork.probe(manager, id, targets)
        let allowed = "\(manager.bridgeIp):\(Self.allowedPort)"
        #expect(results.removeValue(forKey: allowed)?.reached(saying: "host-allowed") == true)
        Self.expectUnreachable(results, in: id)
      }
      // Nor the host's loopback, routed out of the guest's NIC.
      let rerouted = try await manager.exec(a, Self.loopbackOutOfEth0)
      #expect(rerouted.stdout.contains("via \(manager.bridgeIp) dev eth0"), "\(rerouted.stdout)")
      Self.expectUnreachable(
        try await TestNetwork.probe(manager, a, await lab.hostTargets(["127.0.0.1"])), in: a)

      // Another sandbox's agent answers nothing without its key.
      let port = try #require(manager.agentPort(of: listed))
      let keyless = try await manager.inside([
        "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
        "-d", #"{"command":"id"}"#, "http://127.0.0.1:\(port)/exec",
      ])
      #expect(keyless.stdoutText == "401")

      try await expectBridgeRulesShown(manager, ids: [a, listed, closed])
      for id in [a, listed, closed] {
        #expect(try await manager.request("DELETE", "/api/sandboxes/\(id)").status == 204)
      }
      try await BridgeHardeningTests.expectNoNetworkLeftovers(manager)
    }

    /// `network status` and `doctor` show the bridge's rules, each sandbox's among them.
    func expectBridgeRulesShown(_ manager: NamespacedManager, ids: [String]) async throws {
      let status = try await manager.cli(["network", "status"])
      let text = status.stdoutText
      #expect(status.exitCode == 0, "\(text)\(status.stderrText)")
      #expect(
        text.contains("ok   iptables ATELIER-EGRESS (each sandbox's egress policy; 3 sandboxes"))
      #expect(text.contains("ok   nftables bridge atelier (each TAP sends only from its own MAC"))
      #expect(text.contains("3 TAPs now"), "\(text)")
      for id in ids {
        #expect(text.contains("-A ATELIER-EGRESS -s "), "\(text)")
        #expect(text.contains("-j ATELIER-EG-\(id)"), "\(text)")
        #expect(text.contains("chain tap-\(id.prefix(8))"), "\(text)")
      }
      #expect(
        text.split(separator: "\n").contains {
          $0.hasPrefix("-A ATELIER-FORWARD") && $0.contains("-d 169.254.0.0/16")
            && $0.hasSuffix("-j DROP")
        }, "link-local is never forwarded")
      let doctor = try await manager.cli(["doctor", "--json"])
      let findings =
        (try? JSONSerialization.jsonObject(with: Data(doctor.stdout)) as? [[String: Any]]) ?? []
      for name in ["bridge", "guest egress"] {
        let finding = findings.first { $0["name"] as? String == name }
        #expect(finding?["ok"] as? Bool == true, "\(name): \(finding ?? [:])")
      }
    }

    /// `network status` and `doctor` name the user-mode filter and its rules.
    func expectFilterShown(_ manager: NamespacedManager) async throws {
      let status = try await manager.cli(["network", "status"])
      #expect(status.exitCode == 0, "\(status.stdoutText)\(status.stderrText)")
      #expect(status.stdoutText.contains("ok   iptables ATELIER-VM-OUTPUT for uid"))
      #expect(status.stdoutText.contains("-m addrtype --dst-type LOCAL -j REJECT"))
      let doctor = try await manager.cli(["doctor", "--json"])
      let findings =
        (try? JSONSerialization.jsonObject(with: Data(doctor.stdout)) as? [[String: Any]]) ?? []
      let egress = findings.first { $0["name"] as? String == "guest egress" }
      #expect(egress?["ok"] as? Bool == true, "\(doctor.stdoutText)")
      #expect((egress?["detail"] as? String)?.contains("ATELIER-VM-OUTPUT rejects") == true)
    }
  }
}
