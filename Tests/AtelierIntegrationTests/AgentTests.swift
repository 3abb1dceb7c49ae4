import AtelierProcess
import Crypto
import Foundation
import Testing

extension VMTests {
  /// The agent's routes through the manager, on real dev-base and tiny VMs.
  @Suite(.timeLimit(.minutes(15)))
  struct AgentTests {
    func sha256(_ data: Data) -> String {
      SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
    }

    func query(_ path: String) -> String {
      "path="
        + (path.addingPercentEncoding(
          withAllowedCharacters: .alphanumerics.union(["/", "-", "_", "."])) ?? path)
    }

    /// Polls `check` until it returns true (or the timeout passes).
    @Test func devBaseSandbox() async throws {
      try await withManager(images: ["tiny", "dev-base"]) { manager in
        let sandbox = try await manager.createSandbox(["image": "dev-base", "memoryMb": 512])
        let id = try #require(sandbox["id"] as? String)
        let api = "/api/sandboxes/\(id)"

        // exec: dev by default, root on request; a real Debian with git and sudo.
        #expect(
          try await manager.exec(id, ["argv": ["id", "-un"]]).json["stdout"] as? String == "dev\n")
        #expect(
          try await manager.exec(id, ["argv": ["id", "-un"], "user": "root"]).json["stdout"]
            as? String == "root\n")
        let tools = try await manager.exec(
          id, ["command": "sudo -n true && git --version && echo $HOME && pwd", "cwd": "/tmp"])
        #expect(tools.json["exitCode"] as? Int == 0, "\(tools.text)")
        #expect((tools.json["stdout"] as? String)?.contains("git version") == true)
        #expect((tools.json["stdout"] as? String)?.hasSuffix("/home/dev\n/tmp\n") == true)
        let environment = try await manager.exec(
          id, ["command": "echo $GREETING", "env": ["GREETING": "hi"]])
        #expect(environment.json["stdout"] as? String == "hi\n")
        let unknownUser = try await manager.exec(id, ["command": "true", "user": "nobody-here"])
        // The request is well formed; the user it names does not exist in this guest.
        #expect(unknownUser.status == 404, "\(unknownUser.text)")
        #expect(unknownUser.json["error"] as? String == "NOT_FOUND")

        let batch = try await manager.request(
          .POST, "\(api)/exec/batch",
          json: [
            "commands": [["command": "echo one"], ["command": "exit 4"], ["command": "echo never"]]
          ])
        #expect(batch.status == 200)
        let results = batch.json["results"] as? [[String: Any]] ?? []
        #expect(results.count == 2)
        #expect(results.last?["exitCode"] as? Int == 4)
        #expect(batch.json["ok"] as? Bool == false)

        try await streamingExec(manager, id: id)
        try await files(manager, id: id)
        try await services(manager, id: id)
        try await git(manager, id: id)
        try await terminal(manager, id: id, shell: "bash")
        try await shellThroughTmux(manager, id: id)

        let metrics = try await manager.request(.GET, "\(api)/metrics")
        #expect(metrics.status == 200)
        let memory = metrics.json["memory"] as? [String: Any]
        #expect(((memory?["totalBytes"] as? Int) ?? 0) > 400 << 20)
        #expect(((metrics.json["processCount"] as? Int) ?? 0) > 1)
        let rss = (metrics.json["agentRssBytes"] as? Int) ?? 0
        #expect(rss > 0)
        print("agent RSS on dev-base: \(rss / 1024) KiB")
        #expect(try await manager.request(.DELETE, api).status == 204)
      }
    }

    func streamingExec(_ manager: ManagerProcess, id: String) async throws {
      let url =
        manager.baseURL.replacingOccurrences(of: "http://", with: "ws://")
        + "/api/sandboxes/\(id)/exec/stream"
      // stdin is echoed back by cat as it arrives; closing stdin ends it.
      try await withWebSocket(url, token: manager.token) { connection in
        try await connection.send(json: ["argv": ["cat"]])
        try await connection.send(json: ["type": "stdin", "data": "first line\n"])
        let echoed = await connection.wait {
          $0.frames.contains {
            $0["type"] as? String == "stdout"
              && ($0["data"] as? String)?.contains("first line") == true
          }
        }
        #expect(echoed)
        try await connection.send(json: ["type": "stdin", "data": "second\n"])
        try await connection.send(json: ["type": "closeStdin"])
        let exited = await connection.wait {
          $0.frames.contains { $0["type"] as? String == "exit" }
        }
        #expect(exited)
        let frames = connection.frames
        #expect(frames.first?["type"] as? String == "started")
        let output = frames.filter { $0["type"] as? String == "stdout" }.compactMap {
          $0["data"] as? String
        }.joined()
        #expect(output == "first line\nsecond\n")
        #expect(frames.last?["exitCode"] as? Int == 0)
      }
      // A signal ends a long command.
      try await withWebSocket(url, token: manager.token) { connection in
        try await connection.send(json: ["command": "echo ready; exec sleep 300"])
        #expect(
          await connection.wait {
            $0.frames.contains { ($0["data"] as? String)?.contains("ready") == true }
          })
        try await connection.send(json: ["type": "signal", "signal": "KILL"])
        #expect(await connection.wait { $0.frames.contains { $0["type"] as? String == "exit" } })
        let exit = connection.frames.last { $0["type"] as? String == "exit" }
        #expect(exit?["exitCode"] as? Int == 137)
      }
      // A missing token is refused before the upgrade; with one, a plain GET is not a
      // WebSocket upgrade.
      let refused = try await manager.request(
        .GET, "/api/sandboxes/\(id)/exec/stream", authorized: false)
      #expect(refused.status == 401)
      let notUpgrade = try await manager.request(.GET, "/api/sandboxes/\(id)/exec/stream")
      #expect(notUpgrade.status == 400)
    }

    func files(_ manager: ManagerProcess, id: String) async throws {
      let api = "/api/sandboxes/\(id)"
      // Random binary data, 3 MB, up and down unchanged.
      let data = Data((0..<(3 << 20)).map { _ in UInt8.random(in: 0...255) })
      let upload = try await manager.request(
        .PUT, "\(api)/files?\(query("/home/dev/workspace/blob.bin"))", raw: data)
      #expect(upload.status == 201, "\(upload.text)")
      #expect(upload.json["size"] as? Int == data.count)
      #expect(upload.json["owner"] as? String == "dev")
      let download = try await manager.request(
        .GET, "\(api)/files?\(query("/home/dev/workspace/blob.bin"))")
      #expect(download.status == 200)
      #expect(sha256(download.body) == sha256(data))
      let inGuest = try await manager.exec(
        id, ["argv": ["sha256sum", "/home/dev/workspace/blob.bin"]])
      #expect((inGuest.json["stdout"] as? String)?.hasPrefix(sha256(data)) == true)

      // A folder tree as tar, both ways.
      let local = try TestEnvironment.temporaryDirectory("atl-tree")
      defer { try? FileManager.default.removeItem(atPath: local) }
      try FileManager.default.createDirectory(
        atPath: "\(local)/src/a/b", withIntermediateDirectories: true)
      try Data("hello\n".utf8).write(to: URL(fileURLWithPath: "\(local)/src/a/b/hello.txt"))
      try data.prefix(100_000).write(to: URL(fileURLWithPath: "\(local)/src/a/data.bin"))
      let tar = try await ProcessRunner.run(
        SpawnOptions(
          executable: "/bin/tar", arguments: ["-c", "-f", "-", "-C", "\(local)/src", "."]),
        outputLimit: 64 << 20)
      let extracted = try await manager.request(
        .PUT, "\(api)/files/archive?\(query("/home/dev/workspace/tree"))", raw: Data(tar.stdout))
      #expect(extracted.status == 201, "\(extracted.text)")
      let listing = try await manager.request(
        .GET, "\(api)/files/list?\(query("/home/dev/workspace/tree/a"))")
      let names = (listing.json["entries"] as? [[String: Any]] ?? []).compactMap {
        $0["name"] as? String
      }
      #expect(names == ["b", "data.bin"])
      let archive = try await manager.request(
        .GET, "\(api)/files/archive?\(query("/home/dev/workspace/tree"))")
      #expect(archive.status == 200)
      try FileManager.default.createDirectory(
        atPath: "\(local)/back", withIntermediateDirectories: true)
      let untar = try await ProcessRunner.run(
        SpawnOptions(executable: "/bin/tar", arguments: ["-x", "-f", "-", "-C", "\(local)/back"]),
        input: Array(archive.body))
      #expect(untar.exitCode == 0)
      #expect(
        try String(contentsOfFile: "\(local)/back/a/b/hello.txt", encoding: .utf8) == "hello\n")
      #expect(
        try Data(contentsOf: URL(fileURLWithPath: "\(local)/back/a/data.bin"))
          == data.prefix(100_000)
      )

      // Stat, mkdir, batch write, delete.
      let mkdir = try await manager.request(
        .POST, "\(api)/files/mkdir", json: ["path": "/home/dev/workspace/x/y/z"])
      #expect(mkdir.status == 201)
      #expect(mkdir.json["owner"] as? String == "dev")
      let write = try await manager.request(
        .POST, "\(api)/files/write",
        json: [
          "files": [
            ["path": "/home/dev/workspace/x/note.txt", "content": "note"],
            [
              "path": "/home/dev/workspace/x/bin", "content": "AAEC", "encoding": "base64",
              "mode": "0600",
            ],
          ]
        ])
      #expect(write.status == 200)
      let stat = try await manager.request(
        .GET, "\(api)/files/stat?\(query("/home/dev/workspace/x/bin"))")
      #expect(stat.json["size"] as? Int == 3)
      #expect(stat.json["mode"] as? String == "0600")
      #expect(
        try await manager.request(.DELETE, "\(api)/files?\(query("/home/dev/workspace/x"))").status
          == 409)
      #expect(
        try await manager.request(
          .DELETE, "\(api)/files?\(query("/home/dev/workspace/x"))&recursive=true"
        ).status == 204)

      // Clear errors: missing paths, a read-only target, a relative path.
      let missing = try await manager.request(.GET, "\(api)/files?\(query("/no/such/file"))")
      #expect(missing.status == 404)
      #expect(missing.json["error"] as? String == "NOT_FOUND")
      #expect(
        try await manager.request(.GET, "\(api)/files/list?\(query("/no/such"))").status == 404)
      let mount = try await manager.exec(
        id, ["command": "mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro", "user": "root"])
      #expect(mount.json["exitCode"] as? Int == 0, "\(mount.text)")
      let readOnly = try await manager.request(
        .PUT, "\(api)/files?\(query("/mnt/ro/f"))", raw: Data("x".utf8))
      #expect(readOnly.status == 403)
      #expect((readOnly.json["message"] as? String)?.contains("read-only file system") == true)
      let relative = try await manager.request(.GET, "\(api)/files?path=relative/path")
      #expect(relative.status == 400)
    }

    func services(_ manager: ManagerProcess, id: String) async throws {
      let api = "/api/sandboxes/\(id)"
      // A service that crashes is restarted (with backoff).
      let define = try await manager.request(
        .PUT, "\(api)/services/crasher",
        json: ["command": "echo run >> /tmp/runs; sleep 0.2; exit 1"]
      )
      #expect(define.status == 200, "\(define.text)")
      #expect(try await manager.request(.POST, "\(api)/services/crasher/start").status == 200)
      let restarted = try await eventually(.seconds(20)) {
        let status = try await manager.request(.GET, "\(api)/services/crasher")
        return (status.json["restarts"] as? Int ?? 0) >= 2
      }
      #expect(restarted)
      let runs = try await manager.exec(id, ["command": "wc -l < /tmp/runs"])
      #expect(
        Int((runs.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
          ?? 0 >= 2)
      let stopped = try await manager.request(.POST, "\(api)/services/crasher/stop")
      #expect(stopped.json["status"] as? String == "stopped")
      let logs = try await manager.request(
        .GET, "\(api)/services/crasher/logs?offset=0&limit=100000")
      #expect((logs.json["content"] as? String)?.contains("exited with 1") == true)
      #expect(logs.json["nextOffset"] as? Int ?? 0 > 0)
      let cli = try await manager.cli(["sandbox", "logs", id, "crasher"])
      #expect(cli.exitCode == 0)
      #expect(cli.stdoutText.contains("exited with 1"))

      // A long-running service stops with TERM.
      _ = try await manager.request(
        .PUT, "\(api)/services/sleeper", json: ["command": "exec sleep 1000"])
      let running = try await manager.request(.POST, "\(api)/services/sleeper/start")
      #expect(running.json["status"] as? String == "running")
      #expect(running.json["pid"] as? Int ?? 0 > 1)
      let terminated = try await manager.request(.POST, "\(api)/services/sleeper/stop")
      #expect(terminated.json["exitCode"] as? Int == 143)
      #expect(try await manager.request(.GET, "\(api)/services/nothing").status == 404)

      // A dev command: its port shows as listening once it listens.
      let started = try await manager.request(
        .POST, "\(api)/dev/web/start", json: ["command": "sleep 1; exec nc -lk 8080", "port": 8080])
      #expect(started.status == 200, "\(started.text)")
      let listening = try await eventually(.seconds(20)) {
        let list = try await manager.request(.GET, "\(api)/dev")
        return list.jsonArray.first { $0["name"] as? String == "web" }?["listening"] as? Bool
          == true
      }
      #expect(listening)
      let stop = try await manager.request(.POST, "\(api)/dev/web/stop")
      #expect(stop.json["listening"] as? Bool == false)
    }

    func git(_ manager: ManagerProcess, id: String) async throws {
      let api = "/api/sandboxes/\(id)"
      let setup = try await manager.exec(
        id,
        [
          "command": """
          set -e
          git init -q --bare /home/dev/remote.git
          mkdir -p ~/workspace/proj && cd ~/workspace/proj
          git init -q && git remote add origin /home/dev/remote.git
          printf 'one\\ntwo\\nthree\\n' > a.txt
          git add . && git -c user.name=t -c user.email=t@t commit -q -m init
          git push -q -u origin main
          printf 'one\\n2\\nthree\\nfour\\n' > a.txt && echo new > b.txt
          """
        ])
      #expect(setup.json["exitCode"] as? Int == 0, "\(setup.text)")
      let status = try await manager.request(.GET, "\(api)/git/status")
      let repo = (status.json["repos"] as? [[String: Any]])?.first
      #expect(repo?["path"] as? String == "/home/dev/workspace/proj")
      #expect(repo?["branch"] as? String == "main")
      #expect(repo?["dirty"] as? Bool == true)
      #expect(Set(repo?["changedFiles"] as? [String] ?? []) == ["a.txt", "b.txt"])
      #expect((repo?["lastCommit"] as? [String: Any])?["message"] as? String == "init")

      let diff = try await manager.request(
        .GET, "\(api)/git/diff?repoPath=/home/dev/workspace/proj")
      let files =
        ((diff.json["repos"] as? [[String: Any]])?.first?["files"] as? [[String: Any]]) ?? []
      let a = files.first { $0["path"] as? String == "a.txt" }
      #expect(a?["added"] as? Int == 2)
      #expect(a?["removed"] as? Int == 1)
      #expect(files.first { $0["path"] as? String == "b.txt" }?["added"] as? Int == 1)

      let commit = try await manager.request(
        .POST, "\(api)/git/commit",
        json: ["repoPath": "/home/dev/workspace/proj", "message": "second"])
      #expect(commit.json["ok"] as? Bool == true, "\(commit.text)")
      #expect((commit.json["commit"] as? String)?.count == 40)
      let after = try await manager.request(
        .GET, "\(api)/git/status?repoPath=/home/dev/workspace/proj")
      let clean = (after.json["repos"] as? [[String: Any]])?.first
      #expect(clean?["dirty"] as? Bool == false)
      #expect(clean?["ahead"] as? Int == 1)
      let nothing = try await manager.request(
        .POST, "\(api)/git/commit",
        json: ["repoPath": "/home/dev/workspace/proj", "message": "empty"])
      #expect(nothing.status == 409)
      let push = try await manager.request(
        .POST, "\(api)/git/push", json: ["repoPath": "/home/dev/workspace/proj"])
      #expect(push.json["ok"] as? Bool == true, "\(push.text)")
      let pushed = try await manager.request(
        .GET, "\(api)/git/status?repoPath=/home/dev/workspace/proj")
      #expect((pushed.json["repos"] as? [[String: Any]])?.first?["ahead"] as? Int == 0)
      #expect(try await manager.request(.GET, "\(api)/git/status?repoPath=/tmp").status == 404)
    }

    func terminal(_ manager: ManagerProcess, id: String, shell: String) async throws {
      let api = "/api/sandboxes/\(id)"
      let created = try await manager.request(
        .POST, "\(api)/terminal/sessions", json: ["cols": 80, "rows": 24])
      #expect(created.status == 201, "\(created.text)")
      let sid = try #require(created.json["id"] as? String)
      #expect((created.json["command"] as? [String])?.first?.hasSuffix(shell) == true)
      let url =
        manager.baseURL.replacingOccurrences(of: "http://", with: "ws://")
        + "\(api)/terminal/sessions/\(sid)/ws"
      try await withWebSocket(url, token: manager.token) { connection in
        try await connection.send(bytes: Array("echo marker-$((40+2))\r".utf8))
        #expect(await connection.wait { $0.output.contains("marker-42") })
        try await connection.send(json: ["type": "resize", "cols": 100, "rows": 40])
        try await connection.send(json: ["type": "input", "data": "stty size\r"])
        #expect(await connection.wait { $0.output.contains("40 100") })
      }
      // A second client gets the replay of what happened before it attached.
      try await withWebSocket(url, token: manager.token) { connection in
        #expect(await connection.wait { $0.output.contains("marker-42") })
        let listed = try await manager.request(.GET, "\(api)/terminal/sessions")
        #expect(listed.jsonArray.first { $0["id"] as? String == sid }?["clients"] as? Int == 1)
        // The session ends when its shell exits.
        try await connection.send(bytes: Array("exit 7\r".utf8))
        #expect(await connection.wait { $0.frames.contains { $0["type"] as? String == "exit" } })
        #expect(connection.frames.last?["exitCode"] as? Int == 7)
      }
      let gone = try await eventually(.seconds(5)) {
        try await manager.request(.GET, "\(api)/terminal/sessions/\(sid)").status == 404
      }
      #expect(gone)
    }

    /// `atelier sandbox shell` in a real terminal (tmux): typed input, output, exit code.
    func shellThroughTmux(_ manager: ManagerProcess, id: String) async throws {
      let session = "atl-\(id)"
      let environment = ["ATELIER_DATA_DIR": manager.dataDirectory, "ATELIER_URL": manager.baseURL]
        .map { "\($0.key)=\($0.value)" }.joined(separator: " ")
      let command =
        "\(environment) \(TestEnvironment.atelierBinary) sandbox shell \(id); echo SHELL-EXIT=$?; sleep 60"
      func tmux(_ arguments: [String]) async throws -> RunResult {
        try await ProcessRunner.run(
          SpawnOptions(
            executable: "/usr/bin/tmux", arguments: arguments,
            environment: ["PATH": "/usr/bin:/bin", "TERM": "xterm"]))
      }
      #expect(
        try await tmux(["new-session", "-d", "-s", session, "-x", "90", "-y", "30", command])
          .exitCode
          == 0)
      defer { Task { _ = try? await tmux(["kill-session", "-t", session]) } }
      func screen() async throws -> String {
        try await tmux(["capture-pane", "-p", "-t", session]).stdoutText
      }
      #expect(try await eventually(.seconds(20)) { try await screen().contains("$") })
      _ = try await tmux(["send-keys", "-t", session, "echo typed-$((2*21)); tput cols", "Enter"])
      #expect(try await eventually(.seconds(10)) { try await screen().contains("typed-42") })
      #expect(try await eventually(.seconds(10)) { try await screen().contains("\n90") })
      _ = try await tmux(["resize-window", "-t", session, "-x", "110", "-y", "30"])
      try await Task.sleep(for: .milliseconds(500))
      _ = try await tmux(["send-keys", "-t", session, "tput cols; exit 5", "Enter"])
      #expect(try await eventually(.seconds(10)) { try await screen().contains("SHELL-EXIT=5") })
      #expect(try await screen().contains("\n110"))
    }

    @Test func tinySandbox() async throws {
      try await withManager { manager in
        let sandbox = try await manager.createSandbox()
        let id = try #require(sandbox["id"] as? String)
        // No dev user on tiny: commands run as root, the terminal is sh.
        let whoami = try await manager.exec(id, ["argv": ["id", "-u"]])
        #expect(whoami.json["stdout"] as? String == "0\n", "\(whoami.text)")
        try await terminal(manager, id: id, shell: "sh")
        let data = Data((0..<200_000).map { _ in UInt8.random(in: 0...255) })
        #expect(
          try await manager.request(.PUT, "/api/sandboxes/\(id)/files?path=/root/f.bin", raw: data)
            .status == 201)
        #expect(
          try await manager.request(.GET, "/api/sandboxes/\(id)/files?path=/root/f.bin").body
            == data)
        let archive = try await manager.request(
          .GET, "/api/sandboxes/\(id)/files/archive?path=/etc")
        #expect(archive.status == 200)
        #expect(archive.body.count > 1024)
        // The agent answers only for a running sandbox.
        #expect(
          try await manager.request(.GET, "/api/sandboxes/zzzzzzzzzzzz/metrics").status == 404)
        try await copyAndLifecycleFromTheCLI(manager, id: id)
        #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
      }
    }

    /// `atelier sandbox cp` both ways (a file and a folder), and the lifecycle commands.
    func copyAndLifecycleFromTheCLI(_ manager: ManagerProcess, id: String) async throws {
      let local = try TestEnvironment.temporaryDirectory("atl-cp")
      defer { try? FileManager.default.removeItem(atPath: local) }
      let data = Data((0..<50_000).map { _ in UInt8.random(in: 0...255) })
      try FileManager.default.createDirectory(
        atPath: "\(local)/tree/sub", withIntermediateDirectories: true)
      try data.write(to: URL(fileURLWithPath: "\(local)/one.bin"))
      try Data("nested\n".utf8).write(to: URL(fileURLWithPath: "\(local)/tree/sub/file.txt"))

      let up = try await manager.cli(["sandbox", "cp", "\(local)/one.bin", "\(id):/root/one.bin"])
      #expect(up.exitCode == 0, "\(up.stderrText)")
      let upTree = try await manager.cli(["sandbox", "cp", "\(local)/tree", "\(id):/root/tree"])
      #expect(upTree.exitCode == 0, "\(upTree.stderrText)")
      let listed = try await manager.exec(id, ["command": "cat /root/tree/sub/file.txt"])
      #expect(listed.json["stdout"] as? String == "nested\n")
      let down = try await manager.cli([
        "sandbox", "cp", "\(id):/root/one.bin", "\(local)/back.bin",
      ])
      #expect(down.exitCode == 0, "\(down.stderrText)")
      #expect(FileManager.default.contents(atPath: "\(local)/back.bin") == data)
      let downTree = try await manager.cli(["sandbox", "cp", "\(id):/root/tree", "\(local)/back"])
      #expect(downTree.exitCode == 0, "\(downTree.stderrText)")
      #expect(
        FileManager.default.contents(atPath: "\(local)/back/sub/file.txt") == Data("nested\n".utf8))
      let missing = try await manager.cli(["sandbox", "cp", "\(id):/nope", "\(local)/x"])
      #expect(missing.exitCode != 0)
      #expect(missing.stderrText.split(separator: "\n").count == 1, "\(missing.stderrText)")

      for (command, status) in [
        ("pause", "paused"), ("resume", "running"), ("stop", "stopped"), ("start", "running"),
      ] {
        let result = try await manager.cli(["sandbox", command, id])
        #expect(result.exitCode == 0, "\(command): \(result.stderrText)")
        let row = try await manager.request(.GET, "/api/sandboxes/\(id)")
        #expect(row.json["status"] as? String == status, "after \(command)")
      }
      // The disk came through stop/start.
      #expect(
        try await manager.exec(id, ["command": "cat /root/tree/sub/file.txt"]).json["stdout"]
          as? String == "nested\n")
      let again = try await manager.cli(["sandbox", "start", id])
      #expect(again.exitCode != 0)
      #expect(again.stderrText.contains("running"), "\(again.stderrText)")
    }
  }
}
