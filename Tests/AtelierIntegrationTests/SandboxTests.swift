import AtelierProcess
import Foundation
import Testing

extension VMTests {
  /// Real managers booting real VMs (QEMU microvm under TCG here). Serialized: the machine has
  /// two cores, and each test owns its manager and data folder.
  @Suite(.timeLimit(.minutes(10)))
  struct SandboxTests {
    /// The loopback port forwarded to a VM's agent, read from the QEMU command line.
    func agentPort(ofQEMU pid: Int32) -> Int? {
      guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else {
        return nil
      }
      let text = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
      guard let range = text.range(of: "hostfwd=tcp:127.0.0.1:") else { return nil }
      return Int(text[range.upperBound...].prefix { $0.isNumber })
    }

    @Test func badRequestsGetClearErrors() async throws {
      try await withManager { manager in

        let health = try await manager.request(.GET, "/health", authorized: false)
        #expect(health.status == 200)
        #expect(health.json["status"] as? String == "ok")
        let checks = health.json["checks"] as? [String: Any]
        #expect(Set(checks?.keys.map { $0 } ?? []) == ["vmm", "accel", "storage", "images"])

        let missing = try await manager.request(.GET, "/api/sandboxes", authorized: false)
        #expect(missing.status == 401)
        #expect(missing.json["error"] as? String == "UNAUTHORIZED")
        let wrong = try await manager.request(.GET, "/api/sandboxes", token: "atl_wrong")
        #expect(wrong.status == 401)
        // Authentication is decided by the route: a path that is no route is a 404 (the
        // document listing every route is public anyway), a doubled slash a 400.
        let unknownRouteWithoutToken = try await manager.request(
          .GET, "/api/nothing", authorized: false)
        #expect(unknownRouteWithoutToken.status == 404)
        let doubledSlash = try await manager.request(.GET, "//api/sandboxes", authorized: false)
        #expect(doubledSlash.status == 400)

        for body in [
          ["vcpus": 0], ["vcpus": 9], ["memoryMb": 64], ["memoryMb": 20000], ["vcpus": "two"],
          ["diskGb": 0], ["diskGb": 20000],
        ] {
          let answer = try await manager.request(.POST, "/api/sandboxes", json: body)
          #expect(answer.status == 400, "\(body)")
          #expect(answer.json["error"] as? String == "VALIDATION_ERROR")
          #expect((answer.json["message"] as? String)?.isEmpty == false)
        }
        let notJSON = try await manager.request(.POST, "/api/sandboxes", rawBody: "{nope")
        #expect(notJSON.status == 400)
        let unknownImage = try await manager.request(
          .POST, "/api/sandboxes", json: ["image": "nosuchimage"])
        #expect(unknownImage.status == 404)
        #expect(unknownImage.json["error"] as? String == "NOT_FOUND")
        let badImageName = try await manager.request(
          .POST, "/api/sandboxes", json: ["image": "../etc"])
        #expect(badImageName.status == 400)

        for (method, path) in [
          (HTTPMethodName.get, "/api/sandboxes/abcdefabcdef"),
          (.delete, "/api/sandboxes/abcdefabcdef"),
          (.post, "/api/sandboxes/abcdefabcdef/exec"),
        ] {
          let answer = try await manager.request(
            method.nio, path, json: method == .post ? ["command": "true"] : nil)
          #expect(answer.status == 404, "\(path)")
          #expect(answer.json["error"] as? String == "NOT_FOUND")
        }
        let badFilter = try await manager.request(.GET, "/api/sandboxes?status=sleeping")
        #expect(badFilter.status == 400)
        let unknownRoute = try await manager.request(.GET, "/api/nothing")
        #expect(unknownRoute.status == 404)

        let images = try await manager.request(.GET, "/api/images")
        #expect(images.status == 200)
        #expect(images.jsonArray.map { $0["name"] as? String } == ["tiny"])
        // Nothing was created by any of this.
        #expect(manager.files(in: "volumes").isEmpty)
        #expect(manager.qemuProcesses().isEmpty)
      }
    }

    @Test func tokenCommandsMintListAndRevoke() async throws {
      try await withManager { manager in
        let created = try await manager.cli(["token", "create", "--name", "ci"])
        #expect(created.exitCode == 0, "\(created.stderrText)")
        let token = created.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("atl_"))
        #expect(try await manager.request(.GET, "/api/sandboxes", token: token).status == 200)
        let listed = try await manager.cli(["token", "list"])
        #expect(listed.stdoutText.contains("ci") && listed.stdoutText.contains("admin"))
        #expect(!listed.stdoutText.contains(token) && !listed.stdoutText.contains(manager.token))
        let id = try #require(
          listed.stdoutText.split(separator: "\n").first { $0.hasSuffix("ci") }?
            .split(separator: " ").first.map(String.init))
        #expect(try await manager.cli(["token", "revoke", id]).exitCode == 0)
        #expect(try await manager.request(.GET, "/api/sandboxes", token: token).status == 401)
        // The admin token is untouched; an unknown id is a one-line error.
        #expect(try await manager.request(.GET, "/api/sandboxes").status == 200)
        let unknown = try await manager.cli(["token", "revoke", "nosuchtoken0"])
        #expect(unknown.exitCode != 0 && unknown.stderrText.contains("no token"))
      }
    }

    @Test func openAPIDocumentMatchesTheRouter() async throws {
      try await withManager { manager in
        let document = try await manager.request(.GET, "/openapi.json", authorized: false)
        #expect(document.status == 200)
        #expect(document.json["openapi"] as? String == "3.1.0")
        let paths = try #require(document.json["paths"] as? [String: [String: Any]])
        var operations = 0
        for (path, methods) in paths {
          for method in methods.keys {
            operations += 1
            let concrete = path.replacingOccurrences(
              of: #"\{[a-zA-Z]+\}"#, with: "zzzzzzzzzzzz", options: .regularExpression)
            if path == "/api/events" {
              // An endless stream: that it answers with an event stream is enough.
              let events = EventRecorder(manager: manager)
              #expect(await eventually { events.raw.contains(": connected") })
              events.stop()
              continue
            }
            let answer = try await manager.request(
              HTTPMethodName(rawValue: method)!.nio, concrete,
              json: method == "post" ? ["vcpus": 0, "command": ""] : nil, timeout: .seconds(60))
            // Every documented operation is routed: whatever it answers, it is not "no route".
            #expect(!answer.text.contains("no route"), "\(method) \(path): \(answer.text)")
            #expect(answer.status != 405, "\(method) \(path)")
          }
        }
        #expect(operations >= 8)
        // And an undocumented method on a known path is not served.
        let undocumented = try await manager.request(.PUT, "/api/sandboxes")
        #expect(undocumented.status == 405)
        #expect(undocumented.json["error"] as? String == "METHOD_NOT_ALLOWED")
      }
    }

    @Test func createExecDeleteLeavesNothingBehind() async throws {
      try await withManager(environment: [
        "ATELIER_MAX_SANDBOXES": "1", "ATELIER_DISK_SIZE_GB": "3",
      ]) { manager in

        let sandbox = try await manager.createSandbox([
          "image": "tiny", "vcpus": 1, "memoryMb": 256,
        ])
        let id = try #require(sandbox["id"] as? String)
        #expect(sandbox["status"] as? String == "running")
        #expect(sandbox["image"] as? String == "tiny")
        #expect(sandbox["diskGb"] as? Int == 3)
        let timings = try #require(sandbox["timings"] as? [String: Int])
        #expect((timings["totalMs"] ?? 0) > 0)
        #expect((timings["totalMs"] ?? 0) >= (timings["agentMs"] ?? 0))

        // The guest runs its own kernel, not the host's.
        let uname = try await manager.exec(id, ["argv": ["uname", "-r"]])
        #expect(uname.status == 200)
        let guestKernel = (uname.json["stdout"] as? String ?? "").trimmingCharacters(
          in: .whitespacesAndNewlines)
        let hostKernel = try await ProcessRunner.run(
          SpawnOptions(executable: "/bin/uname", arguments: ["-r"]))
        #expect(guestKernel.hasSuffix("cloud-amd64"))
        #expect(
          guestKernel != hostKernel.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines))
        let hostname = try await manager.exec(id, ["command": "hostname"])
        #expect(hostname.json["stdout"] as? String == "sbx-\(id)\n")

        // The agent is not on eth0: only its private NIC's address answers.
        let probe = try await manager.exec(
          id,
          [
            "command":
              "for a in 10.0.2.15 10.0.3.15; do nc -w 2 $a 9998 </dev/null && echo $a open || echo $a closed; done"
          ])
        #expect(probe.json["stdout"] as? String == "10.0.2.15 closed\n10.0.3.15 open\n")

        // The 256 MiB image's clone is a 3 GiB disk; the guest grew its root file system.
        let df = try await manager.exec(id, ["command": "df -k / | tail -1"])
        let rootKiB = (df.json["stdout"] as? String ?? "").split(separator: " ").dropFirst()
          .first.flatMap { Int($0) }
        #expect((rootKiB ?? 0) > 2_800_000, "df: \(df.json["stdout"] ?? "")")

        let failing = try await manager.exec(id, ["command": "echo partial; echo oops >&2; exit 3"])
        #expect(failing.status == 200)
        #expect(failing.json["exitCode"] as? Int == 3)
        #expect(failing.json["stdout"] as? String == "partial\n")
        #expect(failing.json["stderr"] as? String == "oops\n")

        let withInput = try await manager.exec(id, ["argv": ["cat"], "stdin": "hello from stdin"])
        #expect(withInput.json["stdout"] as? String == "hello from stdin")
        let timedOut = try await manager.exec(id, ["command": "sleep 30", "timeoutMs": 500])
        #expect(timedOut.json["timedOut"] as? Bool == true)
        #expect(timedOut.json["exitCode"] as? Int == 137)
        let invalid = try await manager.exec(id, ["cwd": "/"])
        #expect(invalid.status == 400)

        // The limit is 1: a second create is refused.
        let second = try await manager.request(.POST, "/api/sandboxes", json: [:])
        #expect(second.status == 429)
        #expect(second.json["error"] as? String == "RESOURCE_EXHAUSTED")

        // The CLI against the same manager.
        let listed = try await manager.cli(["sandbox", "list"])
        #expect(listed.exitCode == 0)
        #expect(listed.stdoutText.contains(id))
        let cliExec = try await manager.cli([
          "sandbox", "exec", id, "--", "sh", "-c", "echo via-cli; exit 5",
        ])
        #expect(cliExec.exitCode == 5)
        #expect(cliExec.stdoutText == "via-cli\n")
        let cliGet = try await manager.cli(["sandbox", "get", id, "--json"])
        #expect(cliGet.exitCode == 0)
        #expect(cliGet.stdoutText.contains("\"status\" : \"running\""))
        let cliMissing = try await manager.cli(["sandbox", "get", "zzzzzzzzzzzz"])
        #expect(cliMissing.exitCode != 0)
        #expect(cliMissing.stderrText.contains("not found"))

        let qemu = manager.qemuProcesses()
        #expect(qemu.count == 1)
        let port = try #require(agentPort(ofQEMU: qemu[0]))
        #expect(isListening(port: port))
        // The overlay, and the manager's record of its backing file.
        #expect(
          manager.files(in: "volumes") == ["sandbox-\(id).qcow2", "sandbox-\(id).qcow2.backing"])

        let deleted = try await manager.request(.DELETE, "/api/sandboxes/\(id)")
        #expect(deleted.status == 204)
        #expect(manager.qemuProcesses().isEmpty)
        #expect(manager.files(in: "volumes").isEmpty)
        #expect(manager.files(in: "sandboxes").isEmpty)
        // (The kernel may take a moment to tear down the dead VM's listening socket.)
        #expect(await eventually(.seconds(3)) { !isListening(port: port) })
        #expect(try await manager.request(.GET, "/api/sandboxes/\(id)").status == 404)
        #expect(try await manager.request(.GET, "/api/sandboxes").jsonArray.isEmpty)
      }
    }

    @Test func failedCreatesRollBackCompletely() async throws {
      try await withManager { manager in
        let shared = try await TestEnvironment.sharedImage.ensure()
        let good = try #require(
          try JSONSerialization.jsonObject(
            with: Data(contentsOf: URL(fileURLWithPath: "\(shared)/images/tiny/current/image.json"))
          )
            as? [String: Any])

        // An image whose initramfs is garbage: QEMU starts, the kernel panics, the VM exits.
        let garbage = "\(manager.dataDirectory)/garbage-initrd"
        try Data((0..<4096).map { _ in UInt8.random(in: 0...255) }).write(
          to: URL(fileURLWithPath: garbage))
        var broken = good
        var kernel = try #require(good["kernel"] as? [String: Any])
        kernel["initrdPath"] = garbage
        broken["kernel"] = kernel
        broken["name"] = "panics"
        try install(image: broken, as: "panics", in: manager)
        // An image whose kernel does not exist: QEMU itself refuses to start.
        var missingKernel = good
        kernel["kernelPath"] = "/nonexistent/vmlinuz"
        missingKernel["kernel"] = kernel
        missingKernel["name"] = "nokernel"
        try install(image: missingKernel, as: "nokernel", in: manager)

        for image in ["panics", "nokernel"] {
          let answer = try await manager.request(.POST, "/api/sandboxes", json: ["image": image])
          #expect(answer.status == 503, "\(image): \(answer.text)")
          #expect(answer.json["error"] as? String == "BOOT_FAILED")
          #expect((answer.json["message"] as? String)?.contains("failed to boot") == true)
          #expect(manager.qemuProcesses().isEmpty, "\(image)")
          #expect(manager.files(in: "volumes").isEmpty, "\(image)")
          #expect(manager.files(in: "sandboxes").isEmpty, "\(image)")
          #expect(try await manager.request(.GET, "/api/sandboxes").jsonArray.isEmpty, "\(image)")
        }
        // Nothing listens on the agent ports those VMs were given (read from the logged QEMU
        // command lines).
        let ports = manager.log(lines: 2000).split(separator: "hostfwd=tcp:127.0.0.1:").dropFirst()
          .compactMap { Int($0.prefix { $0.isNumber }) }
        #expect(!ports.isEmpty)
        for port in ports { #expect(!isListening(port: port), "port \(port)") }
        // The console's last words went to the log.
        #expect(
          manager.log(lines: 400).contains("Kernel panic")
            || manager.log(lines: 400).contains("initramfs"))
        // And the manager still creates good sandboxes afterwards (ports and limits were released).
        let sandbox = try await manager.createSandbox()
        let id = try #require(sandbox["id"] as? String)
        #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
      }
    }

    func install(image: [String: Any], as name: String, in manager: ManagerProcess) throws {
      let directory = "\(manager.dataDirectory)/images/\(name)/builds/x"
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
      try JSONSerialization.data(withJSONObject: image).write(
        to: URL(fileURLWithPath: "\(directory)/image.json"))
      try FileManager.default.createSymbolicLink(
        atPath: "\(manager.dataDirectory)/images/\(name)/current", withDestinationPath: "builds/x")
    }

    @Test func managerRestartsAdoptLiveVMsAndReconcileDeadOnes() async throws {
      try await withManager { manager in
        let sandbox = try await manager.createSandbox()
        let id = try #require(sandbox["id"] as? String)
        #expect(try await manager.exec(id, ["command": "echo kept > /root/marker"]).status == 200)

        // SIGKILL the manager: the VM survives and the next manager adopts it.
        await manager.kill()
        #expect(manager.qemuProcesses().count == 1)
        try await manager.restart()
        let afterRestart = try await manager.exec(id, ["command": "cat /root/marker"])
        #expect(afterRestart.status == 200)
        #expect(afterRestart.json["stdout"] as? String == "kept\n")
        // The adopted VM still runs as the VM user, under its seccomp filter.
        manager.expectLeastPrivilege(count: 1)

        // SIGKILL the manager in the middle of a create: the next start removes what it made.
        let pending = Task {
          // No retry: the manager is killed under this request, and a retry would keep
          // knocking at a closed port until its timeout.
          try? await manager.request(
            .POST, "/api/sandboxes", json: [:], timeout: .seconds(120),
            retryOnClosedConnection: false)
        }
        let deadline = ContinuousClock.now + .seconds(60)
        while manager.qemuProcesses().count < 2 && ContinuousClock.now < deadline {
          try await Task.sleep(for: .milliseconds(20))
        }
        // (QEMU is not daemonized: exactly one process per VM.)
        #expect(manager.qemuProcesses().count >= 2)
        await manager.kill()
        _ = await pending.value
        try await manager.restart()
        #expect(manager.qemuProcesses().count == 1)
        #expect(
          manager.files(in: "volumes") == ["sandbox-\(id).qcow2", "sandbox-\(id).qcow2.backing"])
        #expect(manager.files(in: "sandboxes") == [id])
        let list = try await manager.request(.GET, "/api/sandboxes")
        #expect(list.jsonArray.compactMap { $0["id"] as? String } == [id])

        // SIGKILL the VM while the manager is down: the next start marks the sandbox as error.
        await manager.kill()
        for pid in manager.qemuProcesses() { kill(pid, SIGKILL) }
        try await Task.sleep(for: .milliseconds(300))
        try await manager.restart()
        let after = try await manager.request(.GET, "/api/sandboxes/\(id)")
        #expect(after.json["status"] as? String == "error")
        #expect((after.json["error"] as? String)?.isEmpty == false)
        let refused = try await manager.exec(id, ["command": "true"])
        #expect(refused.status == 409)
        #expect(refused.json["error"] as? String == "SANDBOX_NOT_RUNNING")
        #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
        #expect(manager.files(in: "volumes").isEmpty)
        #expect(manager.files(in: "sandboxes").isEmpty)
      }
    }
  }
}

/// HTTP methods by name, for tables of requests.
enum HTTPMethodName: String {
  case get, post, put, delete, patch
}
