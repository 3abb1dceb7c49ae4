import AsyncHTTPClient
import Foundation
import NIOCore
import Testing

/// Reads `/api/events` in the background and keeps every event.
final class EventRecorder: @unchecked Sendable {
  private let lock = NSLock()
  private var text = ""
  private var task: Task<Void, Never>?

  init(manager: ManagerProcess, lastEventId: Int? = nil) {
    task = Task {
      var request = HTTPClientRequest(url: manager.baseURL + "/api/events")
      request.headers.add(name: "authorization", value: "Bearer \(manager.token)")
      if let lastEventId { request.headers.add(name: "last-event-id", value: String(lastEventId)) }
      guard let response = try? await HTTPClient.shared.execute(request, timeout: .hours(1)) else {
        return
      }
      do {
        for try await buffer in response.body {
          let chunk = String(buffer: buffer)
          lock.withLock { text += chunk }
        }
      } catch {}
    }
  }

  var raw: String { lock.withLock { text } }

  /// (id, event type, data) of each event so far.
  var events: [(id: Int, type: String, data: [String: Any])] {
    raw.components(separatedBy: "\n\n").compactMap { block in
      var id = 0
      var type = ""
      var data: [String: Any] = [:]
      for line in block.split(separator: "\n") {
        if line.hasPrefix("id: ") { id = Int(line.dropFirst(4)) ?? 0 }
        if line.hasPrefix("event: ") { type = String(line.dropFirst(7)) }
        if line.hasPrefix("data: ") {
          data =
            (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any])
            ?? [:]
        }
      }
      return type.isEmpty ? nil : (id, type, data)
    }
  }

  /// The statuses a sandbox went through, in order.
  func statuses(of id: String) -> [String] {
    events.compactMap { event in
      guard let sandbox = event.data["sandbox"] as? [String: Any], sandbox["id"] as? String == id,
        event.type != "sandbox.deleted"
      else { return nil }
      return sandbox["status"] as? String
    }
  }

  func stop() { task?.cancel() }
}

extension VMTests {
  @Suite(.timeLimit(.minutes(15)))
  struct LifecycleTests {
    func status(_ manager: ManagerProcess, _ id: String) async throws -> String {
      try await manager.request(.GET, "/api/sandboxes/\(id)").json["status"] as? String ?? ""
    }

    func counter(_ manager: ManagerProcess, _ id: String) async throws -> Int {
      let result = try await manager.exec(id, ["command": "cat /root/counter"])
      return Int(
        (result.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
        ?? -1
    }

    static let startCounter =
      "(i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.2; done) >/dev/null 2>&1 &"

    @Test func stopStartPauseResumeIdleAndEvents() async throws {
      let environment = [
        "ATELIER_RECONCILE_INTERVAL_SECONDS": "1", "ATELIER_IDLE_CHECK_SECONDS": "1",
        "ATELIER_EVENTS_HEARTBEAT_SECONDS": "1",
      ]
      try await withManager(environment: environment) { manager in
        let events = EventRecorder(manager: manager)
        defer { events.stop() }
        #expect(await eventually(.seconds(10)) { events.raw.contains(": connected") })
        let sandbox = try await manager.createSandbox()
        let id = try #require(sandbox["id"] as? String)
        let api = "/api/sandboxes/\(id)"

        // A file and a service survive stop/start; the hostname is the same.
        #expect(try await manager.exec(id, ["command": "echo kept > /root/file"]).status == 200)
        let service = try await manager.request(
          .PUT, "\(api)/services/ticker",
          json: ["command": "while true; do date +%s > /root/tick; sleep 1; done"])
        #expect(service.status == 200)
        #expect(try await manager.request(.POST, "\(api)/services/ticker/start").status == 200)
        let stopped = try await manager.request(.POST, "\(api)/stop")
        #expect(stopped.status == 200, "\(stopped.text)")
        #expect(stopped.json["status"] as? String == "stopped")
        #expect(manager.qemuProcesses().isEmpty)
        #expect(try await manager.exec(id, ["command": "true"]).status == 409)
        #expect(try await manager.request(.POST, "\(api)/pause").status == 409)
        let started = try await manager.request(.POST, "\(api)/start")
        #expect(started.status == 200, "\(started.text)")
        #expect(started.json["status"] as? String == "running")
        let afterStart = try await manager.exec(id, ["command": "cat /root/file; hostname"])
        #expect(afterStart.json["stdout"] as? String == "kept\nsbx-\(id)\n")
        manager.expectLeastPrivilege(count: 1)
        let ticking = try await eventually(.seconds(15)) {
          try await manager.request(.GET, "\(api)/services/ticker").json["status"] as? String
            == "running"
        }
        #expect(ticking)
        #expect(try await manager.request(.POST, "\(api)/start").status == 409)

        // A counting process keeps counting across pause/resume, and does not while paused.
        #expect(try await manager.exec(id, ["command": Self.startCounter]).status == 200)
        try await Task.sleep(for: .seconds(1))
        let before = try await counter(manager, id)
        let paused = try await manager.request(.POST, "\(api)/pause")
        #expect(paused.json["status"] as? String == "paused")
        try await Task.sleep(for: .seconds(2))
        let resumed = try await manager.request(.POST, "\(api)/resume")
        #expect(resumed.json["status"] as? String == "running")
        let justAfter = try await counter(manager, id)
        #expect(justAfter >= before && justAfter <= before + 3, "\(before) → \(justAfter)")
        try await Task.sleep(for: .seconds(1.5))
        #expect(try await counter(manager, id) >= justAfter + 3)
        // The guest clock follows the host's after a pause.
        let clock = try await manager.exec(id, ["argv": ["date", "+%s"]])
        let guestTime =
          Int(
            (clock.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines))
          ?? 0
        #expect(abs(guestTime - Int(Date().timeIntervalSince1970)) <= 2)

        // An exec to a paused sandbox resumes it transparently.
        #expect(try await manager.request(.POST, "\(api)/pause").status == 200)
        #expect(
          try await manager.exec(id, ["command": "echo awake"]).json["stdout"] as? String
            == "awake\n")
        #expect(try await status(manager, id) == "running")

        // Two stops at once: one stops it, the other finds it stopped.
        async let first = manager.request(.POST, "\(api)/stop")
        async let second = manager.request(.POST, "\(api)/stop")
        let codes = try await [first.status, second.status].sorted()
        #expect(codes == [200, 409])
        #expect(try await manager.request(.POST, "\(api)/start").status == 200)

        // Idle: no traffic for the timeout pauses it; a request wakes it.
        let patched = try await manager.request(
          .PATCH, api, json: ["timeoutSeconds": 3, "onIdle": "pause"])
        #expect(patched.json["timeoutSeconds"] as? Int == 3)
        let slept = try await eventually(.seconds(20)) {
          // Reading the list does not count as activity on this sandbox.
          try await manager.request(.GET, "/api/sandboxes").jsonArray.first?["status"] as? String
            == "paused"
        }
        #expect(slept)
        #expect(
          try await manager.exec(id, ["command": "echo woke"]).json["stdout"] as? String == "woke\n"
        )
        // A command that runs longer than the timeout is activity all along: not paused under it.
        #expect(try await manager.request(.PATCH, api, json: ["timeoutSeconds": 2]).status == 200)
        let long = try await manager.exec(id, ["command": "sleep 5; echo done"])
        #expect(long.json["stdout"] as? String == "done\n")
        #expect(try await status(manager, id) == "running")
        #expect(try await manager.request(.PATCH, api, json: ["timeoutSeconds": 0]).status == 200)
        #expect(try await manager.request(.PATCH, api, json: ["timeoutSeconds": -1]).status == 400)

        // The event stream saw every transition, in order, and nothing else (updates that keep
        // the status, such as a PATCH, repeat it: those are collapsed).
        let seen = events.statuses(of: id)
        let transitions = seen.enumerated().filter {
          $0.offset == 0 || seen[$0.offset - 1] != $0.element
        }
        .map(\.element)
        #expect(
          transitions == [
            "creating", "running",  // create
            "stopping", "stopped", "running",  // stop, start
            "paused", "running",  // pause, resume
            "paused", "running",  // pause, an exec resumes it
            "stopping", "stopped", "running",  // two stops at once, start
            "paused", "running",  // idle, an exec wakes it
          ], "\(seen)")
        #expect(events.raw.contains(": heartbeat"))
        // Last-Event-ID replays what came after it.
        let recorded = events.events.map(\.id)
        #expect(recorded.count > 3 && zip(recorded, recorded.dropFirst()).allSatisfy { $0 < $1 })
        let replay = EventRecorder(manager: manager, lastEventId: recorded[1])
        #expect(await eventually(.seconds(5)) { replay.events.first?.id == recorded[2] })
        replay.stop()

        // A VM killed behind the manager's back is marked error by the periodic reconciler.
        for pid in manager.qemuProcesses() { kill(pid, SIGKILL) }
        #expect(try await eventually(.seconds(15)) { try await status(manager, id) == "error" })
        let restarted = try await manager.request(.POST, "\(api)/start")
        #expect(restarted.status == 200, "\(restarted.text)")
        #expect(
          try await manager.exec(id, ["command": "cat /root/file"]).json["stdout"] as? String
            == "kept\n")

        let stats = try await manager.request(.GET, "/api/system/stats")
        #expect((stats.json["sandboxes"] as? [String: Any])?["counted"] as? Int == 1)
        #expect((stats.json["sandboxes"] as? [String: Any])?["limit"] as? Int == 20)
        #expect(try await manager.request(.DELETE, api).status == 204)
      }
    }

    @Test func snapshotsRestoresAndForks() async throws {
      try await withManager { manager in
        // A disk of its own size; restores and forks get the same.
        let sandbox = try await manager.createSandbox(["diskGb": 2])
        #expect(sandbox["diskGb"] as? Int == 2)
        let id = try #require(sandbox["id"] as? String)
        #expect(
          try await manager.exec(
            id, ["command": "echo original > /root/file; " + Self.startCounter]
          ).status == 200)
        try await Task.sleep(for: .seconds(1))

        let snapshot = try await manager.request(
          .POST, "/api/sandboxes/\(id)/snapshots", json: ["name": "base"])
        #expect(snapshot.status == 201, "\(snapshot.text)")
        let snapshotId = try #require(snapshot.json["id"] as? String)
        #expect(snapshot.json["sandboxId"] as? String == id)
        #expect((snapshot.json["sizeBytes"] as? Int ?? 0) > 1 << 20)
        #expect(try await status(manager, id) == "running")
        // The original goes on after the snapshot, and its later changes stay its own.
        #expect(try await manager.exec(id, ["command": "echo later > /root/later"]).status == 200)

        // Two restores of one snapshot at once.
        async let one = manager.request(.POST, "/api/sandboxes", json: ["snapshot": snapshotId])
        async let two = manager.request(.POST, "/api/sandboxes", json: ["snapshot": snapshotId])
        let restores = try await [one, two]
        var restoredIds: [String] = []
        for restore in restores {
          #expect(restore.status == 201, "\(restore.text)")
          guard let restoredId = restore.json["id"] as? String else { continue }
          restoredIds.append(restoredId)
          #expect(restore.json["snapshotId"] as? String == snapshotId)
          #expect(restore.json["diskGb"] as? Int == 2)
          let rootKiB = try await manager.exec(
            restoredId, ["command": "df -k / | tail -1 | awk '{print $2}'"])
          let kib =
            Int(
              (rootKiB.json["stdout"] as? String ?? "").trimmingCharacters(
                in: .whitespacesAndNewlines)) ?? 0
          #expect(kib > 1_800_000 && kib < 2_200_000, "\(kib) KiB")
          let state = try await manager.exec(
            restoredId, ["command": "cat /root/file; hostname; ls /root"])
          #expect(state.json["stdout"] as? String == "original\nsbx-\(restoredId)\ncounter\nfile\n")
          // The counting process came along, and counts on.
          let first = try await counter(manager, restoredId)
          try await Task.sleep(for: .seconds(1))
          #expect(try await counter(manager, restoredId) > first)
        }
        #expect(Set(restoredIds).count == 2)
        #expect(!restoredIds.contains(id))
        manager.expectLeastPrivilege(count: 3)
        // Fresh entropy: the two restores do not produce the same random bytes.
        var randoms: [String] = []
        for restoredId in restoredIds {
          let random = try await manager.exec(
            restoredId, ["command": "head -c 16 /dev/urandom | od -An -tx1"])
          randoms.append(random.json["stdout"] as? String ?? "")
        }
        #expect(randoms.count == 2 && randoms[0] != randoms[1])

        // Fork N=2: each continues from the parent and writes only its own files.
        let fork = try await manager.request(.POST, "/api/sandboxes/\(id)/fork", json: ["count": 2])
        #expect(fork.status == 201, "\(fork.text)")
        let forks = (fork.json["sandboxes"] as? [[String: Any]] ?? []).compactMap {
          $0["id"] as? String
        }
        #expect(forks.count == 2)
        for forkId in forks {
          let written = try await manager.exec(
            forkId, ["command": "cat /root/later && echo \(forkId) > /root/mine-\(forkId)"])
          #expect(written.json["stdout"] as? String == "later\n")
        }
        for sandboxId in forks + [id] {
          let mine = try await manager.exec(sandboxId, ["command": "ls /root | grep mine- || true"])
          let expected = forks.contains(sandboxId) ? "mine-\(sandboxId)\n" : ""
          #expect(mine.json["stdout"] as? String == expected, "\(sandboxId)")
        }
        #expect(try await status(manager, id) == "running")
        #expect(
          try await manager.request(.POST, "/api/sandboxes/\(id)/fork", json: ["count": 99]).status
            == 400)

        // Deleting the snapshot leaves its restores working.
        let listed = try await manager.request(.GET, "/api/snapshots")
        #expect(listed.jsonArray.compactMap { $0["id"] as? String } == [snapshotId])
        #expect(try await manager.request(.DELETE, "/api/snapshots/\(snapshotId)").status == 204)
        #expect(try await manager.request(.DELETE, "/api/snapshots/\(snapshotId)").status == 404)
        #expect(
          try await manager.request(.POST, "/api/sandboxes", json: ["snapshot": snapshotId]).status
            == 404)
        for restoredId in restoredIds {
          #expect(
            try await manager.exec(restoredId, ["command": "sync; cat /root/file"]).json["stdout"]
              as? String == "original\n")
        }
        // The parent can still stop and start on its disk chain.
        #expect(try await manager.request(.POST, "/api/sandboxes/\(id)/restart").status == 200)
        #expect(
          try await manager.exec(id, ["command": "cat /root/later"]).json["stdout"] as? String
            == "later\n")

        for sandboxId in restoredIds + forks + [id] {
          #expect(try await manager.request(.DELETE, "/api/sandboxes/\(sandboxId)").status == 204)
        }
        // Once nothing uses them, the frozen disks go too.
        let cleanup = try await manager.request(.POST, "/api/system/cleanup")
        #expect(cleanup.status == 200)
        #expect(manager.files(in: "volumes").isEmpty, "\(manager.files(in: "volumes"))")
        #expect(manager.qemuProcesses().isEmpty)
      }
    }
  }
}
