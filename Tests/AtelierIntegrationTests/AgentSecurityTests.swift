import AsyncHTTPClient
import AtelierProcess
import Foundation
import NIOCore
import NIOHTTP1
import Testing

extension VMTests {
  /// The agent key, host services through tunnels, and what a guest hands back to `cp`, on
  /// real tiny VMs.
  @Suite(.timeLimit(.minutes(15)))
  struct AgentSecurityTests {
    /// The key of a sandbox, from its key drive in the sandbox's folder.
    func key(_ manager: ManagerProcess, _ id: String) throws -> String {
      let data = try #require(
        FileManager.default.contents(
          atPath: "\(manager.dataDirectory)/sandboxes/\(id)/agent-key.img"))
      let text = String(decoding: data.prefix { $0 != 0 }, as: UTF8.self)
      let lines = text.split(separator: "\n")
      #expect(lines.first == "ATELIER-AGENT-KEY 1")
      return String(try #require(lines.dropFirst().first))
    }

    /// The loopback port forwarded to a sandbox's agent (its QEMU's only hostfwd).
    func agentPort(_ manager: ManagerProcess, _ id: String) throws -> Int {
      for pid in manager.qemuProcesses() {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else {
          continue
        }
        let text = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        guard text.contains("/sandboxes/\(id)/"),
          let range = text.range(of: "hostfwd=tcp:127.0.0.1:")
        else { continue }
        return try #require(Int(text[range.upperBound...].prefix { $0.isNumber }))
      }
      throw TestFailure("no QEMU for \(id)")
    }

    /// A request straight to an agent, with the key given (or none).
    func agent(_ port: Int, _ path: String, key: String?) async throws -> HTTPAnswer {
      var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
      if let key { request.headers.add(name: "authorization", value: "Bearer \(key)") }
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
      let body = try await response.body.collect(upTo: 1 << 20)
      return HTTPAnswer(status: Int(response.status.code), body: Data(body.readableBytesView))
    }

    @Test func theAgentAnswersOnlyWithItsKeyAndTheKeyStaysSecret() async throws {
      try await withManager { manager in
        let id = try #require(try await manager.createSandbox()["id"] as? String)
        let key = try key(manager, id)
        let port = try agentPort(manager, id)
        #expect(try await agent(port, "/metrics", key: nil).status == 401)
        #expect(
          try await agent(port, "/metrics", key: String(repeating: "0", count: 64)).status == 401)
        let health = try await agent(port, "/health", key: nil)
        #expect(health.status == 200 && health.json.keys.sorted() == ["status"], "\(health.text)")
        // Positive controls: the key opens the agent, and the manager (which has it) works.
        #expect(try await agent(port, "/metrics", key: key).status == 200)
        #expect(try await agent(port, "/health", key: key).json["sandboxId"] as? String == id)
        let exec = try await manager.exec(id, ["command": "cat /proc/cmdline; echo; ls /dev"])
        #expect(exec.json["exitCode"] as? Int == 0, "\(exec.text)")
        #expect(!exec.text.contains(key), "the key is on the guest's kernel command line")

        // Not in any process's arguments, the manager's log, or what the API says.
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
          guard Int32(entry) != nil,
            let arguments = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
          else { continue }
          #expect(!String(decoding: arguments, as: UTF8.self).contains(key), "in argv of \(entry)")
        }
        let log = try String(contentsOfFile: manager.logPath, encoding: .utf8)
        #expect(!log.contains(key))
        #expect(!(try await manager.request(.GET, "/api/sandboxes/\(id)")).text.contains(key))
        #expect(!(try await manager.request(.GET, "/api/sandboxes")).text.contains(key))
        var info = stat()
        #expect(stat("\(manager.dataDirectory)/sandboxes/\(id)/agent-key.img", &info) == 0)
        #expect(info.st_mode & 0o777 == 0o600)

        // In the guest, root can read the key drive (positive control) and another user cannot.
        let asRoot = try await manager.exec(
          id, ["command": "for d in /dev/vd*; do head -c 17 $d; echo; done"])
        #expect((asRoot.json["stdout"] as? String)?.contains("ATELIER-AGENT-KEY") == true)
        _ = try await manager.exec(
          id,
          [
            "command":
              "echo 'guest:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd && echo 'guest:x:1000:' >> /etc/group"
          ])
        let asGuest = try await manager.exec(
          id, ["command": "id -u; for d in /dev/vd*; do head -c 100 $d; done", "user": "guest"])
        #expect((asGuest.json["stdout"] as? String)?.hasPrefix("1000\n") == true, "\(asGuest.text)")
        #expect(!asGuest.text.contains("ATELIER-AGENT-KEY"), "\(asGuest.text)")
        #expect(!asGuest.text.contains(key))
        #expect((asGuest.json["stderr"] as? String)?.contains("Permission denied") == true)
      }
    }

    @Test func restoresAndForksGetKeysOfTheirOwn() async throws {
      try await withManager { manager in
        let parent = try #require(try await manager.createSandbox()["id"] as? String)
        let parentKey = try key(manager, parent)
        let snapshot = try await manager.request(.POST, "/api/sandboxes/\(parent)/snapshots")
        #expect(snapshot.status == 201, "\(snapshot.text)")
        let snapshotId = try #require(snapshot.json["id"] as? String)
        let restore = try await manager.request(
          .POST, "/api/sandboxes", json: ["snapshot": snapshotId])
        #expect(restore.status == 201, "\(restore.text)")
        let restored = try #require(restore.json["id"] as? String)
        let fork = try await manager.request(
          .POST, "/api/sandboxes/\(parent)/fork", json: ["count": 1])
        #expect(fork.status == 201, "\(fork.text)")
        let forked = try #require(
          (fork.json["sandboxes"] as? [[String: Any]])?.first?["id"] as? String)
        for child in [restored, forked] {
          let childKey = try key(manager, child)
          #expect(childKey != parentKey)
          let port = try agentPort(manager, child)
          // The snapshot's key (the parent's, in the memory it was restored from) is refused.
          #expect(try await agent(port, "/metrics", key: parentKey).status == 401, "\(child)")
          #expect(try await agent(port, "/metrics", key: childKey).status == 200, "\(child)")
          #expect(
            try await agent(port, "/health", key: childKey).json["sandboxId"] as? String == child)
          let exec = try await manager.exec(child, ["command": "hostname"])
          #expect(exec.json["stdout"] as? String == "sbx-\(child)\n", "\(exec.text)")
        }
        // The parent keeps its own.
        #expect(
          try await agent(try agentPort(manager, parent), "/metrics", key: parentKey).status == 200)
      }
    }

    @Test func aGuestReachesAListedHostServiceAndNothingElse() async throws {
      let listed = LineEchoServer()
      let unlisted = LineEchoServer()
      defer {
        listed.stop()
        unlisted.stop()
      }
      try await withManager(environment: [
        "ATELIER_GUEST_SERVICES": "7000=127.0.0.1:\(listed.port)"
      ]) { manager in
        let id = try #require(try await manager.createSandbox()["id"] as? String)
        let hosts = try await manager.exec(id, ["command": "cat /etc/hosts"])
        #expect(
          (hosts.json["stdout"] as? String)?.contains("127.0.0.2\thost.atelier.internal") == true)
        // Positive control: the listed service answers, by name.
        let reached = try await manager.exec(
          id, ["command": "echo hello | nc host.atelier.internal 7000", "timeoutMs": 20000])
        #expect(reached.json["stdout"] as? String == "echo:hello\n", "\(reached.text)")
        // The unlisted one is not reachable by that name, on its own port or through 7000.
        let refused = try await manager.exec(
          id,
          ["command": "echo hello | nc host.atelier.internal \(unlisted.port)", "timeoutMs": 20000])
        #expect(refused.json["exitCode"] as? Int != 0, "\(refused.text)")
        #expect((refused.json["stdout"] as? String) == "", "\(refused.text)")
        #expect(unlisted.connections == 0)
        #expect(listed.connections == 1)
        // Several at once, in parallel.
        let parallel = try await manager.exec(
          id,
          [
            "command":
              "for i in 1 2 3 4 5 6; do (echo n$i | nc host.atelier.internal 7000 > /tmp/o$i) & done; wait; cat /tmp/o*",
            "timeoutMs": 30000,
          ])
        #expect(
          (parallel.json["stdout"] as? String)?.split(separator: "\n").sorted()
            == (1...6).map { "echo:n\($0)" }, "\(parallel.text)")
        // A restarted manager (the VM lives on) opens tunnels to it again.
        try await manager.restart()
        let adopted = try await eventually(.seconds(30)) {
          let answer = try await manager.exec(
            id, ["command": "echo adopted | nc host.atelier.internal 7000", "timeoutMs": 10000])
          return answer.json["stdout"] as? String == "echo:adopted\n"
        }
        #expect(adopted)
        // After a restore, the restored sandbox reaches it too (its tunnels are its own).
        let snapshot = try await manager.request(.POST, "/api/sandboxes/\(id)/snapshots")
        let snapshotId = try #require(snapshot.json["id"] as? String)
        let restore = try await manager.request(
          .POST, "/api/sandboxes", json: ["snapshot": snapshotId])
        let restored = try #require(restore.json["id"] as? String, "\(restore.text)")
        let again = try await manager.exec(
          restored, ["command": "echo again | nc host.atelier.internal 7000", "timeoutMs": 20000])
        #expect(again.json["stdout"] as? String == "echo:again\n", "\(again.text)")
      }
    }

    @Test func copyingAHostileFolderOutOfAGuestLandsNothingOutside() async throws {
      try await withManager { manager in
        let id = try #require(try await manager.createSandbox()["id"] as? String)
        let local = try TestEnvironment.temporaryDirectory("atl-agent-cp")
        defer { try? FileManager.default.removeItem(atPath: local) }
        // A real guest folder: a device node, a setuid file, a symlink to /etc, ordinary files.
        let made = try await manager.exec(
          id,
          [
            "command": """
            mkdir -p /root/hostile/sub && cd /root/hostile && echo hello > ok.txt && \
            echo inner > sub/inner.txt && mknod null c 1 3 && mkfifo fifo && \
            echo x > setuid && chmod 4755 setuid && ln -s /etc etc
            """
          ])
        #expect(made.json["exitCode"] as? Int == 0, "\(made.text)")
        let copied = try await manager.cli([
          "sandbox", "cp", "\(id):/root/hostile", "\(local)/real",
        ])
        #expect(copied.exitCode == 0, "\(copied.stderrText)")
        let real = "\(local)/real"
        #expect(try String(contentsOfFile: "\(real)/ok.txt", encoding: .utf8) == "hello\n")
        #expect(try String(contentsOfFile: "\(real)/sub/inner.txt", encoding: .utf8) == "inner\n")
        #expect(mode("\(real)/setuid").map { $0 & 0o7000 } == 0, "setuid kept")
        #expect(mode("\(real)/setuid") != nil, "the setuid file's content is ordinary")
        for gone in ["null", "fifo", "etc"] { #expect(mode("\(real)/\(gone)") == nil, "\(gone)") }

        // A crafted stream: the guest's `tar` replaced by one that writes `../` and absolute
        // members, and a file through a link.
        let crafted = CraftedArchive.hostile(outside: "\(local)/escaped.txt")
        #expect(
          try await manager.request(
            .PUT, "/api/sandboxes/\(id)/files?path=/root/crafted.tar&mode=0644", raw: crafted
          ).status == 201)
        let script = "#!/bin/sh\ncat /root/crafted.tar\n"
        #expect(
          try await manager.request(
            .PUT, "/api/sandboxes/\(id)/files?path=/usr/local/bin/tar&mode=0755",
            raw: Data(script.utf8)
          ).status == 201)
        try FileManager.default.createDirectory(
          atPath: "\(local)/crafted", withIntermediateDirectories: true)
        let hostile = try await manager.cli([
          "sandbox", "cp", "\(id):/root/hostile", "\(local)/crafted/in",
        ])
        #expect(hostile.exitCode == 0, "\(hostile.stderrText)")
        #expect(hostile.stderrText.contains("skipped"), "\(hostile.stderrText)")
        let target = "\(local)/crafted/in"
        #expect(try String(contentsOfFile: "\(target)/fine.txt", encoding: .utf8) == "fine")
        for outside in [
          "\(local)/escaped.txt", "\(local)/crafted/escaped.txt", "\(local)/crafted/up.txt",
          "/tmp/atl-agent-absolute-member", "/etc/atl-agent-through-link",
        ] {
          #expect(mode(outside) == nil, "\(outside) was written")
        }
        // The link was refused; the file under its name is an ordinary one, inside.
        #expect(mode("\(target)/etc").map { $0 & S_IFMT } == S_IFDIR)
        #expect(mode("\(target)/zero") == nil)
      }
    }

    func mode(_ path: String) -> UInt32? {
      var info = stat()
      guard lstat(path, &info) == 0 else { return nil }
      return UInt32(info.st_mode)
    }
  }
}

/// A host service for guests: answers `echo:<first line>` and closes.
final class LineEchoServer: @unchecked Sendable {
  final class Counter: @unchecked Sendable {
    let lock = NSLock()
    var value = 0
  }
  let fd: Int32
  let port: Int
  let accepted = Counter()
  var connections: Int { accepted.lock.withLock { accepted.value } }

  init() {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length)
        return getsockname(fd, $0, &length)
      }
    }
    self.fd = fd
    port = Int(UInt16(bigEndian: address.sin_port))
    listen(fd, 16)
    Thread { [fd, accepted] in
      while true {
        let connection = accept(fd, nil, nil)
        if connection < 0 { return }
        accepted.lock.withLock { accepted.value += 1 }
        Thread {
          var line: [UInt8] = []
          var byte: UInt8 = 0
          while recv(connection, &byte, 1, 0) == 1 && byte != 10 { line.append(byte) }
          let answer = Array("echo:\(String(decoding: line, as: UTF8.self))\n".utf8)
          _ = answer.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, 0) }
          close(connection)
        }.start()
      }
    }.start()
  }

  func stop() { shutdown(fd, Int32(SHUT_RDWR)) }
}

/// A tar stream no honest tar writes.
enum CraftedArchive {
  static func header(
    _ name: String, type: Character, size: Int = 0, link: String = "", mode: Int = 0o644
  )
    -> [UInt8]
  {
    func field(_ text: String, _ length: Int) -> [UInt8] {
      let value = Array(text.utf8.prefix(length))
      return value + [UInt8](repeating: 0, count: length - value.count)
    }
    func octal(_ value: Int, _ length: Int) -> [UInt8] {
      let digits = String(value, radix: 8)
      return field(String(repeating: "0", count: length - 1 - digits.count) + digits, length)
    }
    var block = field(name, 100) + octal(mode, 8) + octal(0, 8) + octal(0, 8) + octal(size, 12)
    block += octal(0, 12) + Array("        ".utf8) + Array(String(type).utf8) + field(link, 100)
    block += field("ustar\u{0}00", 8) + [UInt8](repeating: 0, count: 247)
    let sum = block.reduce(0) { $0 + Int($1) }
    block.replaceSubrange(148..<156, with: octal(sum, 7) + [0])
    return block
  }

  static func file(_ name: String, _ content: String, mode: Int = 0o644) -> [UInt8] {
    let bytes = Array(content.utf8)
    return header(name, type: "0", size: bytes.count, mode: mode) + bytes
      + [UInt8](repeating: 0, count: (512 - bytes.count % 512) % 512)
  }

  static func hostile(outside: String) -> Data {
    var bytes = file("./fine.txt", "fine")
    bytes += file("../escaped.txt", "escaped")
    bytes += file("./a/../../up.txt", "escaped")
    bytes += file("/tmp/atl-agent-absolute-member", "absolute")
    bytes += file(outside, "absolute")
    bytes += header("./etc", type: "2", link: "/etc")
    bytes += file("./etc/atl-agent-through-link", "through the link")
    bytes += header("./zero", type: "3")
    bytes += [UInt8](repeating: 0, count: 1024)
    return Data(bytes)
  }
}
