import AtelierCore
import AtelierProcess
import Foundation
import Testing

/// A manager inside a network namespace this test creates, with bridge (or user-mode)
/// networking: the bridge, TAP devices, firewall rules and every socket QEMU opens for a guest
/// exist only there, and guests reach nothing outside it but the namespaces the test links to
/// it (`TestInternet`). The test talks to the manager with `ip netns exec … curl`.
final class NamespacedManager: @unchecked Sendable {
  let namespace: String
  let dataDirectory: String
  let port = 4300
  let bridgeIp = "172.31.0.1"
  let bridge = "atlnetbr0"
  let environment: [String: String]
  private(set) var pid: Int32 = 0
  private(set) var token = ""

  static var canRun: Bool {
    getuid() == 0 && FileManager.default.fileExists(atPath: "/dev/net/tun")
      && FileManager.default.isExecutableFile(atPath: "/usr/sbin/iptables")
      && FileManager.default.isExecutableFile(atPath: "/usr/sbin/nft")
      && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")
  }

  init(
    allowedPort: Int, network: String = "bridge", environment extra: [String: String] = [:],
    beforeLaunch: (NamespacedManager) async throws -> Void = { _ in }
  ) async throws {
    let shared = try await TestEnvironment.sharedImage.ensure()
    namespace = "atlnet\(Identifier.make(length: 6))"
    dataDirectory = try TestEnvironment.temporaryDirectory("atl-br")
    try FileManager.default.createDirectory(
      atPath: "\(dataDirectory)/images", withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(
      atPath: "\(dataDirectory)/images/tiny", withDestinationPath: "\(shared)/images/tiny")
    try FileManager.default.createSymbolicLink(
      atPath: "\(dataDirectory)/kernels", withDestinationPath: "\(shared)/kernels")
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = dataDirectory
    environment["ATELIER_SERVER_HOST"] = "0.0.0.0"  // so a guest could try to reach it
    environment["ATELIER_SERVER_PORT"] = String(port)
    environment["ATELIER_ACCEL"] = "tcg"
    environment["ATELIER_NETWORK"] = network
    environment["ATELIER_BRIDGE_NAME"] = bridge
    environment["ATELIER_BRIDGE_IP"] = bridgeIp
    environment["ATELIER_BRIDGE_ALLOWED_PORTS"] = String(allowedPort)
    // A host service for guests, on the namespace's loopback (reached only through tunnels).
    environment["ATELIER_GUEST_SERVICES"] = "7000=127.0.0.1:\(allowedPort + 2)"
    environment["ATELIER_LOG_LEVEL"] = "debug"
    for (key, value) in extra { environment[key] = value }
    self.environment = environment
    try await run(["ip", "netns", "add", namespace])
    do {
      try await inside(["ip", "link", "set", "lo", "up"])
      try await beforeLaunch(self)
      try await launch()
    } catch {
      await tearDown()
      throw error
    }
  }

  @discardableResult
  func run(_ arguments: [String], input: String? = nil) async throws -> RunResult {
    let result = try await ProcessRunner.run(
      SpawnOptions(
        executable: arguments[0], arguments: Array(arguments.dropFirst()),
        environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]),
      input: input.map { Array($0.utf8) }, timeout: .seconds(300))
    return result
  }

  @discardableResult
  func inside(_ arguments: [String]) async throws -> RunResult {
    try await run(["ip", "netns", "exec", namespace] + arguments)
  }

  /// The `atelier` CLI in the namespace, configured as the manager is.
  func cli(_ arguments: [String]) async throws -> RunResult {
    try await ProcessRunner.run(
      SpawnOptions(
        executable: "/usr/sbin/ip",
        arguments: ["netns", "exec", namespace, TestEnvironment.atelierBinary] + arguments,
        environment: environment),
      timeout: .seconds(120))
  }

  func launch() async throws {
    let logFile = open(
      "\(dataDirectory)/manager.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    defer { close(logFile) }
    pid = try ProcessReaper.shared.spawn(
      SpawnOptions(
        executable: "/usr/sbin/ip",
        arguments: ["netns", "exec", namespace, TestEnvironment.atelierBinary, "serve"],
        environment: environment, stdout: logFile, stderr: logFile))
    let deadline = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < deadline {
      if (try? await request("GET", "/health", authorized: false))?.status == 200 {
        token = try String(contentsOfFile: "\(dataDirectory)/admin-token", encoding: .utf8)
          .trimmingCharacters(in: .whitespacesAndNewlines)
        return
      }
      try await Task.sleep(for: .milliseconds(200))
    }
    throw TestFailure("namespaced manager did not start:\n\(log(lines: 30))")
  }

  func kill() async {
    guard pid > 0 else { return }
    Foundation.kill(pid, SIGKILL)
    _ = await ProcessReaper.shared.waitForExit(pid)
    pid = 0
  }

  func log(lines: Int) -> String {
    ((try? String(contentsOfFile: "\(dataDirectory)/manager.log", encoding: .utf8)) ?? "")
      .split(separator: "\n").suffix(lines).joined(separator: "\n")
  }

  func request(
    _ method: String, _ path: String, json: [String: Any]? = nil, authorized: Bool = true
  )
    async throws -> HTTPAnswer
  {
    var arguments = [
      "curl", "-s", "-X", method, "-o", "-", "-w", "\n%{http_code}", "--max-time", "300",
    ]
    if authorized { arguments += ["-H", "Authorization: Bearer \(token)"] }
    if let json {
      arguments += [
        "-H", "content-type: application/json",
        "--data-binary",
        String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self),
      ]
    }
    let result = try await inside(arguments + ["http://127.0.0.1:\(port)\(path)"])
    let text = result.stdoutText
    guard let newline = text.lastIndex(of: "\n"),
      let status = Int(text[text.index(after: newline)...])
    else {
      throw TestFailure("curl failed: \(result.stderrText)")
    }
    return HTTPAnswer(status: status, body: Data(text[..<newline].utf8))
  }

  /// Runs a command in the guest; an exec that did not happen is a failure, never an output.
  func exec(_ id: String, _ command: String) async throws -> (code: Int, stdout: String) {
    let answer = try await request("POST", "/api/sandboxes/\(id)/exec", json: ["command": command])
    guard answer.status == 200, let code = answer.json["exitCode"] as? Int else {
      throw TestFailure("exec in \(id) answered \(answer.status): \(answer.text)")
    }
    return (code, answer.json["stdout"] as? String ?? "")
  }

  /// From inside the guest: does a TCP connection to host:port get an answer?
  func reaches(_ id: String, _ host: String, _ port: Int) async throws -> Bool {
    let result = try await exec(
      id, "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 \(host) \(port) | head -c 64; true")
    guard result.code == 0 else { throw TestFailure("the reachability probe in \(id) failed") }
    return !result.stdout.isEmpty
  }

  /// The command lines of the VM processes of this manager's sandboxes.
  func vmCommandLines() -> [(pid: Int32, arguments: [String])] {
    let prefix = "\(dataDirectory)/sandboxes/"
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap {
      guard let pid = Int32($0),
        let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
      else { return nil }
      let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
      return arguments.contains { $0.contains(prefix) } ? (pid, arguments) : nil
    }
  }

  /// The loopback port the agent of `id` is forwarded to (from its QEMU's `hostfwd`).
  func agentPort(of id: String) -> Int? {
    for (_, arguments) in vmCommandLines()
    where arguments.contains(where: { $0.contains("/\(id)/") }) {
      for argument in arguments where argument.contains("id=agent0") {
        guard let range = argument.range(of: "hostfwd=tcp:127.0.0.1:") else { continue }
        return Int(argument[range.upperBound...].prefix { $0.isNumber })
      }
    }
    return nil
  }

  func tearDown() async {
    await kill()
    for (pid, _) in vmCommandLines() { Foundation.kill(pid, SIGKILL) }
    _ = try? await run(["ip", "netns", "del", namespace])
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }
}

extension VMTests {
  @Suite(.timeLimit(.minutes(10)))
  struct BridgeNetworkTests {
    @Test(
      .enabled(
        if: NamespacedManager.canRun,
        "needs root, /dev/net/tun, iptables and curl to build a bridge inside a network namespace"))
    func sandboxesAreIsolatedOnTheBridge() async throws {
      let allowedPort = 8081
      let manager = try await NamespacedManager(allowedPort: allowedPort)
      do {
        try await scenario(manager, allowedPort: allowedPort)
      } catch {
        await manager.tearDown()
        throw error
      }
      await manager.tearDown()
    }

    func scenario(_ manager: NamespacedManager, allowedPort: Int) async throws {
      // A server on the bridge address on an allowed port, and one on a port that is not.
      let www = try TestEnvironment.temporaryDirectory("atl-www")
      defer { try? FileManager.default.removeItem(atPath: www) }
      try Data("served\n".utf8).write(to: URL(fileURLWithPath: "\(www)/index.html"))
      var servers: [Int32] = []
      for (port, address) in [
        (allowedPort, manager.bridgeIp), (allowedPort + 1, manager.bridgeIp),
        (allowedPort + 2, "127.0.0.1"),
      ] {
        servers.append(
          try ProcessReaper.shared.spawn(
            SpawnOptions(
              executable: "/usr/sbin/ip",
              arguments: [
                "netns", "exec", manager.namespace, "python3", "-m", "http.server", String(port),
                "--bind", address, "--directory", www,
              ],
              environment: ProcessInfo.processInfo.environment)))
      }
      defer { for server in servers { kill(server, SIGKILL) } }

      var ids: [String] = []
      var addresses: [String] = []
      for _ in 0..<2 {
        let created = try await manager.request("POST", "/api/sandboxes", json: [:])
        #expect(created.status == 201, "\(created.text)\n\(manager.log(lines: 30))")
        ids.append(try #require(created.json["id"] as? String))
        addresses.append(try #require(created.json["ipAddress"] as? String))
      }
      #expect(addresses == ["172.31.0.10", "172.31.0.11"])
      // ipAddress is what the guest has on eth0.
      for (id, address) in zip(ids, addresses) {
        let shown = try await manager.exec(id, "ip -4 addr show eth0")
        #expect(shown.stdout.contains("inet \(address)/24"), "\(shown.stdout)")
      }

      // Both reach the allowed port on the bridge IP; neither the other port nor the manager.
      for id in ids {
        #expect(try await manager.reaches(id, manager.bridgeIp, allowedPort))
        #expect(!(try await manager.reaches(id, manager.bridgeIp, allowedPort + 1)))
        #expect(!(try await manager.reaches(id, manager.bridgeIp, manager.port)))
        // The guest service on the host's loopback, by name through a tunnel, as in user mode
        // (and not directly: it listens on loopback only).
        #expect(try await manager.reaches(id, "host.atelier.internal", 7000))
        #expect(!(try await manager.reaches(id, manager.bridgeIp, allowedPort + 2)))
      }
      // The guests cannot reach each other (a listener on each, tried from the other).
      for id in ids {
        _ = try await manager.exec(
          id, "(while true; do echo hello | nc -l -p 8080; done) >/dev/null 2>&1 &")
      }
      // The listeners work.
      #expect(try await manager.reaches(ids[0], "127.0.0.1", 8080))
      #expect(try await manager.reaches(ids[1], "127.0.0.1", 8080))
      #expect(!(try await manager.reaches(ids[0], addresses[1], 8080)))
      #expect(!(try await manager.reaches(ids[1], addresses[0], 8080)))
      #expect(
        try await manager.exec(ids[0], "ping -c 1 -W 2 \(addresses[1]) >/dev/null; echo $?").stdout
          != "0\n")
      // No IPv6 on the bridge (the firewall is IPv4): no host address to reach over IPv6.
      let ipv6 = try await manager.inside([
        "cat", "/proc/sys/net/ipv6/conf/\(manager.bridge)/disable_ipv6",
      ])
      #expect(ipv6.stdoutText == "1\n")
      let ipv6Addresses = try await manager.inside([
        "ip", "-6", "addr", "show", "dev", manager.bridge,
      ])
      #expect(!ipv6Addresses.stdoutText.contains("inet6"), "\(ipv6Addresses.stdoutText)")
      // The agent is not on the bridge: nothing answers on its port at a guest's address.
      let agentOnBridge = try await manager.inside([
        "python3", "-c",
        "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(0 if s.connect_ex(('\(addresses[0])', 9998))==0 else 1)",
      ])
      #expect(agentOnBridge.exitCode == 1)

      // After a manager restart the addresses are the same, and the guests still answer.
      await manager.kill()
      try await manager.launch()
      let listed = try await manager.request("GET", "/api/sandboxes")
      #expect(listed.jsonArray.compactMap { $0["ipAddress"] as? String }.sorted() == addresses)
      #expect(try await manager.exec(ids[0], "hostname").stdout == "sbx-\(ids[0])\n")
      // A new sandbox does not take an address in use.
      let third = try await manager.request("POST", "/api/sandboxes", json: [:])
      #expect(third.json["ipAddress"] as? String == "172.31.0.12", "\(third.text)")
      if let thirdId = third.json["id"] as? String {
        #expect(try await manager.request("DELETE", "/api/sandboxes/\(thirdId)").status == 204)
      }
      for id in ids {
        #expect(try await manager.request("DELETE", "/api/sandboxes/\(id)").status == 204)
      }
      // No TAP device is left.
      let links = try await manager.inside(["ip", "-o", "link", "show"])
      #expect(!links.stdoutText.contains("tap-"), "\(links.stdoutText)")
    }
  }
}
