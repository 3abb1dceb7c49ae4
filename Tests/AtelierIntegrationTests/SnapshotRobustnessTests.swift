import AtelierCore
import AtelierProcess
import Foundation
import Testing

/// A user-mode-networking manager inside a network namespace this test creates, with a veth
/// to a second test namespace ("outside") that serves HTTP: guests have an outbound network to
/// reach, and nothing beyond these two namespaces exists for them.
final class IsolatedUserModeManager: @unchecked Sendable {
  let namespace = "atlq\(Identifier.make(length: 6))"
  let outside = "atlo\(Identifier.make(length: 6))"
  let serverAddress = "10.77.0.2"
  let serverPort = 8080
  let dataDirectory: String
  let port = 4310
  let environment: [String: String]
  private(set) var pid: Int32 = 0
  private(set) var server: Int32 = 0
  private(set) var token = ""

  static var unavailableReason: String? {
    guard getuid() == 0 else { return "needs root to create network namespaces" }
    for tool in ["/usr/bin/curl", "/usr/bin/python3", "/usr/sbin/ip"]
    where !FileManager.default.isExecutableFile(atPath: tool) {
      return "needs \(tool)"
    }
    return nil
  }

  init(environment extra: [String: String] = [:]) async throws {
    let shared = try await TestEnvironment.sharedImage.ensure()
    dataDirectory = try TestEnvironment.temporaryDirectory("atl-rb")
    try FileManager.default.createDirectory(
      atPath: "\(dataDirectory)/images", withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(
      atPath: "\(dataDirectory)/images/tiny", withDestinationPath: "\(shared)/images/tiny")
    try FileManager.default.createSymbolicLink(
      atPath: "\(dataDirectory)/kernels", withDestinationPath: "\(shared)/kernels")
    try Data("probe answered\n".utf8).write(to: URL(fileURLWithPath: "\(dataDirectory)/probe"))
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = dataDirectory
    environment["ATELIER_SERVER_PORT"] = String(port)
    environment["ATELIER_ACCEL"] = "tcg"
    environment["ATELIER_LOG_LEVEL"] = "debug"
    for (key, value) in extra { environment[key] = value }
    self.environment = environment
    for name in [namespace, outside] {
      try await run(["ip", "netns", "add", name])
      try await run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])
    }
    try await run([
      "ip", "link", "add", "atlv\(namespace.suffix(6))", "netns", namespace, "type", "veth",
      "peer", "name", "atlw\(namespace.suffix(6))", "netns", outside,
    ])
    for (name, link, address) in [
      (namespace, "atlv\(namespace.suffix(6))", "10.77.0.1/24"),
      (outside, "atlw\(namespace.suffix(6))", "\(serverAddress)/24"),
    ] {
      try await run(["ip", "netns", "exec", name, "ip", "addr", "add", address, "dev", link])
      try await run(["ip", "netns", "exec", name, "ip", "link", "set", link, "up"])
    }
    server = try ProcessReaper.shared.spawn(
      SpawnOptions(
        executable: "/usr/sbin/ip",
        arguments: [
          "netns", "exec", outside, "/usr/bin/python3", "-m", "http.server", String(serverPort),
          "--bind", serverAddress, "--directory", dataDirectory,
        ],
        environment: ProcessInfo.processInfo.environment))
    try await launch()
  }

  @discardableResult
  func run(_ arguments: [String]) async throws -> RunResult {
    let result = try await ProcessRunner.run(
      SpawnOptions(
        executable: arguments[0], arguments: Array(arguments.dropFirst()),
        environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]),
      timeout: .seconds(300))
    guard result.exitCode == 0 || arguments.starts(with: ["ip", "netns", "exec"]) else {
      throw TestFailure("\(arguments.joined(separator: " ")): \(result.stderrText)")
    }
    return result
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
      if (try? await request("GET", "/health"))?.status == 200,
        let text = try? String(contentsOfFile: "\(dataDirectory)/admin-token", encoding: .utf8)
      {
        token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return
      }
      try await Task.sleep(for: .milliseconds(200))
    }
    throw TestFailure("the namespaced manager did not start:\n\(log(lines: 30))")
  }

  func log(lines: Int) -> String {
    ((try? String(contentsOfFile: "\(dataDirectory)/manager.log", encoding: .utf8)) ?? "")
      .split(separator: "\n").suffix(lines).joined(separator: "\n")
  }

  func request(_ method: String, _ path: String, json: [String: Any]? = nil) async throws
    -> HTTPAnswer
  {
    var arguments = [
      "ip", "netns", "exec", namespace, "curl", "-s", "-X", method, "-o", "-", "-w",
      "\n%{http_code}", "--max-time", "300",
    ]
    if !token.isEmpty { arguments += ["-H", "Authorization: Bearer \(token)"] }
    if let json {
      arguments += [
        "-H", "content-type: application/json", "--data-binary",
        String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self),
      ]
    }
    let text = try await run(arguments + ["http://127.0.0.1:\(port)\(path)"]).stdoutText
    guard let newline = text.lastIndex(of: "\n"),
      let status = Int(text[text.index(after: newline)...])
    else { throw TestFailure("curl to the namespaced manager failed") }
    return HTTPAnswer(status: status, body: Data(text[..<newline].utf8))
  }

  /// An exec that did not happen is a failure, never an output.
  func exec(_ id: String, _ command: String) async throws -> String {
    let answer = try await request("POST", "/api/sandboxes/\(id)/exec", json: ["command": command])
    guard answer.status == 200, answer.json["exitCode"] as? Int == 0 else {
      throw TestFailure("exec `\(command)` in \(id) answered \(answer.status): \(answer.text)")
    }
    return (answer.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
  }

  func tearDown() async {
    if pid > 0 {
      Foundation.kill(pid, SIGKILL)
      _ = await ProcessReaper.shared.waitForExit(pid)
    }
    if server > 0 {
      Foundation.kill(server, SIGKILL)
      _ = await ProcessReaper.shared.waitForExit(server)
    }
    let prefix = "\(dataDirectory)/sandboxes/"
    for pidText in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
      guard let vm = Int32(pidText),
        let data = FileManager.default.contents(atPath: "/proc/\(vm)/cmdline"),
        String(decoding: data, as: UTF8.self).contains(prefix)
      else { continue }
      Foundation.kill(vm, SIGKILL)
    }
    for name in [namespace, outside] { _ = try? await run(["ip", "netns", "del", name]) }
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }
}

extension VMTests {
  /// The original abandoned memory snapshots as fragile (network after a restore, vsock
  /// paths, the clock, services). 20 restores of one snapshot in a row, and 20 forks, every
  /// one healthy: the agent answers, the clock is within 1 s of the host's, the declared
  /// service runs, and the outbound network works.
  @Suite(.timeLimit(.minutes(20)))
  struct SnapshotRobustnessTests {
    @Test(
      .disabled(
        if: IsolatedUserModeManager.unavailableReason != nil,
        "\(IsolatedUserModeManager.unavailableReason ?? "")"))
    func twentyRestoresAndTwentyForksAreAllHealthy() async throws {
      let manager = try await IsolatedUserModeManager()
      do {
        try await scenario(manager)
      } catch {
        Issue.record("manager log:\n\(manager.log(lines: 80))")
        await manager.tearDown()
        throw error
      }
      await manager.tearDown()
    }

    func scenario(_ manager: IsolatedUserModeManager) async throws {
      let created = try await manager.request("POST", "/api/sandboxes", json: [:])
      let parent = try #require(created.json["id"] as? String, "\(created.text)")
      let service = try await manager.request(
        "PUT", "/api/sandboxes/\(parent)/services/ticker",
        json: ["command": "while true; do date +%s > /root/tick; sleep 1; done"])
      #expect(service.status == 200, "\(service.text)")
      #expect(
        try await manager.request("POST", "/api/sandboxes/\(parent)/services/ticker/start").status
          == 200)
      // The probe works from the parent (the positive control for every "healthy" below).
      try await expectHealthy(manager, parent)
      let snapshot = try await manager.request("POST", "/api/sandboxes/\(parent)/snapshots")
      let snapshotId = try #require(snapshot.json["id"] as? String, "\(snapshot.text)")

      var failures = 0
      for round in 0..<20 {
        let restored = try await manager.request(
          "POST", "/api/sandboxes", json: ["snapshot": snapshotId])
        guard restored.status == 201, let id = restored.json["id"] as? String else {
          Issue.record("restore \(round) answered \(restored.status): \(restored.text)")
          failures += 1
          continue
        }
        do { try await expectHealthy(manager, id) } catch {
          Issue.record("restore \(round): \(error)")
          failures += 1
        }
        #expect(try await manager.request("DELETE", "/api/sandboxes/\(id)").status == 204)
      }
      for round in 0..<5 {
        let fork = try await manager.request(
          "POST", "/api/sandboxes/\(parent)/fork", json: ["count": 4])
        let ids = (fork.json["sandboxes"] as? [[String: Any]] ?? []).compactMap {
          $0["id"] as? String
        }
        guard fork.status == 201, ids.count == 4 else {
          Issue.record("fork \(round) answered \(fork.status): \(fork.text)")
          failures += 4
          continue
        }
        for id in ids {
          do { try await expectHealthy(manager, id) } catch {
            Issue.record("fork \(round) \(id): \(error)")
            failures += 1
          }
          #expect(try await manager.request("DELETE", "/api/sandboxes/\(id)").status == 204)
        }
      }
      #expect(failures == 0)
      #expect(try await manager.request("DELETE", "/api/sandboxes/\(parent)").status == 204)
      #expect(try await manager.request("DELETE", "/api/snapshots/\(snapshotId)").status == 204)
    }

    /// The agent answers, the clock agrees with the host's within a second, the service runs,
    /// and the guest reaches the server outside.
    func expectHealthy(_ manager: IsolatedUserModeManager, _ id: String) async throws {
      let before = Date().timeIntervalSince1970
      let guest = Double(try await manager.exec(id, "date +%s")) ?? 0
      let after = Date().timeIntervalSince1970
      guard guest >= before.rounded(.down) - 1, guest <= after + 1 else {
        throw TestFailure("guest clock \(guest), host \(before)…\(after)")
      }
      let status = try await manager.request("GET", "/api/sandboxes/\(id)/services/ticker")
      guard status.json["status"] as? String == "running" else {
        throw TestFailure("the service is \(status.text)")
      }
      let answer = try await manager.exec(
        id,
        "printf 'GET /probe HTTP/1.0\\r\\n\\r\\n' | nc -w 5 \(manager.serverAddress) "
          + "\(manager.serverPort) | tail -1")
      guard answer == "probe answered" else {
        throw TestFailure("the outside server answered \(answer)")
      }
    }
  }
}
