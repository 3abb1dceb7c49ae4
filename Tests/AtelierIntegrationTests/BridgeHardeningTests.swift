import AtelierCore
import AtelierHost
import AtelierProcess
import Foundation
import Testing

/// Bridge networking against a hostile guest (spoofing) and against failure (250 creates that
/// fail, a manager that leaves rules behind), in a namespace of the test's own.
extension VMTests {
  @Suite(.timeLimit(.minutes(15)))
  struct BridgeHardeningTests {
    static let allowedPort = 8081

    /// Packets from `source` counted by a rule of no target at the head of INPUT, in
    /// `namespace` (zeroed by `reset`).
    struct Counter {
      let manager: NamespacedManager
      let namespace: String
      let match: [String]

      func install() async throws {
        try await manager.run(
          ["ip", "netns", "exec", namespace, "iptables", "-w", "-I", "INPUT", "1"] + match)
      }
      func reset() async throws {
        try await manager.run(["ip", "netns", "exec", namespace, "iptables", "-w", "-Z", "INPUT"])
      }
      func packets() async throws -> Int {
        let listed = try await manager.run([
          "ip", "netns", "exec", namespace, "iptables", "-w", "-L", "INPUT", "1", "-v", "-x", "-n",
        ])
        return Int(listed.stdoutText.split(separator: " ").first ?? "") ?? -1
      }
    }

    @Test(
      .enabled(
        if: NamespacedManager.canRun,
        "needs root, /dev/net/tun, iptables, nft and curl for namespaces of its own"))
    func aGuestTakingAnotherOnesAddressesSendsNothingAsIt() async throws {
      var internet: TestInternet?
      let manager = try await NamespacedManager(
        allowedPort: Self.allowedPort,
        beforeLaunch: { internet = try await TestInternet(linkedTo: $0) })
      do {
        try await spoofing(manager, internet: try #require(internet))
      } catch {
        Issue.record("manager log:\n\(manager.log(lines: 60))")
        await internet?.tearDown()
        await manager.tearDown()
        throw error
      }
      await internet?.tearDown()
      await manager.tearDown()
    }

    func spoofing(_ manager: NamespacedManager, internet: TestInternet) async throws {
      var sandboxes: [(id: String, ip: String, mac: String)] = []
      for _ in 0..<2 {
        let created = try await manager.request("POST", "/api/sandboxes", json: [:])
        let id = try #require(created.json["id"] as? String, "\(created.text)")
        let ip = try #require(created.json["ipAddress"] as? String)
        sandboxes.append((id, ip, BridgeNetwork.mac(for: ip)))
      }
      let (a, b) = (sandboxes[0], sandboxes[1])
      let atHost = Counter(
        manager: manager, namespace: manager.namespace, match: ["-s", b.ip, "-i", manager.bridge])
      let atInternet = Counter(
        manager: manager, namespace: internet.namespace, match: ["-s", TestInternet.hostAddress])
      try await atHost.install()
      try await atInternet.install()
      // B answers on 8090 as itself; A is ready to answer as an impostor.
      for (sandbox, name) in [(a, "impostor"), (b, "I-am-B")] {
        _ = try await manager.exec(
          sandbox.id, "(while true; do echo \(name) | nc -l -p 8090; done) >/dev/null 2>&1 &")
      }
      let send = """
        ping -c 2 -W 1 \(manager.bridgeIp) >/dev/null 2>&1; \
        ping -c 2 -W 1 \(TestInternet.publicServer) >/dev/null 2>&1; \
        printf x | timeout 5 nc -w 2 \(manager.bridgeIp) \(Self.allowedPort) >/dev/null 2>&1; \
        printf x | timeout 5 nc -w 2 \(TestInternet.publicServer) \(TestInternet.port) \
        >/dev/null 2>&1; true
        """
      // The controls: the counters see B itself, and A's traffic out as itself.
      _ = try await manager.exec(b.id, send)
      #expect(try await atHost.packets() > 0)
      try await atHost.reset()
      try await atInternet.reset()
      _ = try await manager.exec(a.id, send)
      #expect(try await atInternet.packets() > 0)
      try await atInternet.reset()

      // A takes B's MAC and IP (its agent is on another NIC: exec still works).
      let takeOver = """
        ip link set eth0 down && ip link set eth0 address \(b.mac) && ip addr flush dev eth0 \
        && ip addr add \(b.ip)/24 dev eth0 && ip link set eth0 up \
        && ip route add default via \(manager.bridgeIp) && ip -o link show eth0 && ip -o -4 addr \
        show eth0
        """
      let taken = try await manager.exec(a.id, takeOver)
      #expect(taken.code == 0 && taken.stdout.contains(b.mac) && taken.stdout.contains(b.ip))
      _ = try await manager.exec(a.id, send)
      #expect(try await atHost.packets() == 0, "the host received traffic as B from A")
      #expect(try await atInternet.packets() == 0, "the internet received traffic from A as B")
      // Traffic for B still goes to B, not to the impostor.
      let answer = try await manager.inside([
        "sh", "-c", "printf x | timeout 5 nc -w 3 \(b.ip) 8090",
      ])
      #expect(answer.stdoutText == "I-am-B\n", "\(answer.stdoutText)")
      let fdb = try await manager.inside(["bridge", "fdb", "show", "br", manager.bridge])
      let entries = fdb.stdoutText.split(separator: "\n").filter { $0.hasPrefix(b.mac) }
      #expect(
        entries.count == 1 && entries[0].contains("dev \(BridgeNetwork.tapName(b.id)) "),
        "\(fdb.stdoutText)")
    }

    /// What the host holds for sandboxes in the manager's namespace: TAPs, anti-spoofing
    /// chains, egress chains and jumps, leases.
    static func networkLeftovers(_ manager: NamespacedManager) async throws -> [String] {
      var found: [String] = []
      let links = try await manager.inside(["ip", "-o", "link", "show"]).stdoutText
      found += links.split(separator: "\n").filter { $0.contains(" tap-") }.map { "link \($0)" }
      let nft = try await manager.inside(["nft", "list", "table", "bridge", "atelier"]).stdoutText
      found += nft.split(separator: "\n").filter {
        $0.contains("tap-") && !$0.contains("\"tap-*\"")
      }
      .map { "nft \($0)" }
      let rules = try await manager.inside(["iptables", "-w", "-S"]).stdoutText
      found += rules.split(separator: "\n").filter { $0.contains("ATELIER-EG-") }.map(String.init)
      let egress = try await manager.inside(["iptables", "-w", "-S", "ATELIER-EGRESS"]).stdoutText
      if egress.split(separator: "\n").filter({ $0.hasPrefix("-A") }) != [
        "-A ATELIER-EGRESS -j DROP"
      ] {
        found.append("ATELIER-EGRESS: \(egress)")
      }
      let leases = try await manager.run([
        "python3", "-c",
        "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM network_leases').fetchone()[0])",
        "\(manager.dataDirectory)/atelier.db",
      ])
      if leases.stdoutText != "0\n" {
        found.append("leases: \(leases.stdoutText)\(leases.stderrText)")
      }
      return found
    }

    static func expectNoNetworkLeftovers(_ manager: NamespacedManager) async throws {
      let left = try await networkLeftovers(manager)
      #expect(left.isEmpty, "\(left.joined(separator: "\n"))")
    }

    @Test(
      .enabled(
        if: NamespacedManager.canRun,
        "needs root, /dev/net/tun, iptables, nft and curl for namespaces of its own"))
    func failedCreatesAndVanishedSandboxesLeaveNoNetworkBehind() async throws {
      // QEMU that exits at once while the flag file exists: a boot that fails cheaply.
      let scratch = try TestEnvironment.temporaryDirectory("atl-net-qemu")
      defer { try? FileManager.default.removeItem(atPath: scratch) }
      let flag = "\(scratch)/fail"
      let wrapper = "\(scratch)/qemu"
      try """
      #!/bin/sh
      [ -e \(flag) ] && { echo "failing on purpose" >&2; exit 1; }
      exec qemu-system-x86_64 "$@"
      """.write(toFile: wrapper, atomically: true, encoding: .utf8)
      chmod(wrapper, 0o755)
      chmod(scratch, 0o755)
      FileManager.default.createFile(atPath: flag, contents: Data())
      let manager = try await NamespacedManager(
        allowedPort: Self.allowedPort, environment: ["ATELIER_QEMU_BINARY": wrapper])
      do {
        try await failures(manager, flag: flag)
      } catch {
        Issue.record("manager log:\n\(manager.log(lines: 60))")
        await manager.tearDown()
        throw error
      }
      await manager.tearDown()
    }

    func failures(_ manager: NamespacedManager, flag: String) async throws {
      let started = ContinuousClock.now
      let statuses = try await withThrowingTaskGroup(of: [Int].self) { group in
        for _ in 0..<10 {
          group.addTask {
            var statuses: [Int] = []
            for _ in 0..<25 {
              statuses.append(try await manager.request("POST", "/api/sandboxes", json: [:]).status)
            }
            return statuses
          }
        }
        return try await group.reduce(into: []) { $0 += $1 }
      }
      let elapsed = ContinuousClock.now - started
      #expect(statuses.count == 250 && statuses.allSatisfy { $0 == 503 }, "\(Set(statuses))")
      #expect(elapsed < .seconds(150), "250 failed creates took \(elapsed)")
      try await Self.expectNoNetworkLeftovers(manager)
      let rows = try await manager.request("GET", "/api/sandboxes")
      #expect(rows.jsonArray.isEmpty)

      // A live sandbox, and leftovers of one the manager never heard of (a TAP, its
      // anti-spoofing chain, an egress chain with its jump, a lease).
      try FileManager.default.removeItem(atPath: flag)
      let created = try await manager.request("POST", "/api/sandboxes", json: [:])
      let live = try #require(created.json["id"] as? String, "\(created.text)")
      let ghost = "zzghostghost"
      let tap = "tap-\(ghost.prefix(8))"
      try await manager.inside(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
      try await manager.run(
        ["ip", "netns", "exec", manager.namespace, "nft", "-f", "-"],
        input: """
          add chain bridge atelier \(tap)
          add rule bridge atelier \(tap) drop
          add element bridge atelier taps { "\(tap)" : jump \(tap) }

          """)
      try await manager.inside(["iptables", "-w", "-N", "ATELIER-EG-\(ghost)"])
      try await manager.inside([
        "iptables", "-w", "-I", "ATELIER-EGRESS", "1", "-s", "172.31.0.250/32", "-j",
        "ATELIER-EG-\(ghost)",
      ])
      try await manager.run([
        "python3", "-c",
        "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"INSERT INTO network_leases (sandboxId, octet) VALUES ('\(ghost)', 250)\"); c.commit()",
        "\(manager.dataDirectory)/atelier.db",
      ])
      let report = try await manager.request("POST", "/api/system/cleanup")
      let removed = report.json["removedNetwork"] as? [String] ?? []
      #expect(
        Set(removed) == [tap, "ATELIER-EG-\(ghost)", "lease of \(ghost)"],
        "\(report.text)")
      // The live sandbox kept everything and still works; deleting it leaves nothing.
      let kept = try await Self.networkLeftovers(manager)
      #expect(kept.contains { $0.contains("-j ATELIER-EG-\(live)") }, "\(kept)")
      #expect(kept.contains { $0.contains("link") && $0.contains(BridgeNetwork.tapName(live)) })
      #expect(kept.contains { $0.contains("nft") && $0.contains(BridgeNetwork.tapName(live)) })
      #expect(try await manager.exec(live, "echo ok").stdout == "ok\n")
      #expect(try await manager.request("DELETE", "/api/sandboxes/\(live)").status == 204)
      try await Self.expectNoNetworkLeftovers(manager)
    }
  }
}
