import AtelierCore
import AtelierProcess
import Crypto
import Foundation
import Testing

extension VMTests {
  /// Snapshots as memory files: restores map the snapshot's file privately, snapshots of
  /// restores capture what they wrote, a deleted snapshot's file lives as long as a VM maps it,
  /// and a manager killed during a snapshot leaves nothing behind.
  @Suite(.timeLimit(.minutes(20)))
  struct MemorySnapshotTests {
    func stdout(_ answer: HTTPAnswer) -> String {
      (answer.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func counter(_ manager: ManagerProcess, _ id: String) async throws -> Int {
      Int(stdout(try await manager.exec(id, ["command": "cat /root/counter"]))) ?? -1
    }

    static let startCounter =
      "(i=0; while true; do i=$((i+1)); echo $i > /root/counter; sleep 0.2; done) >/dev/null 2>&1 &"

    @Test func restoresShareTheSnapshotFileAndNeverWriteIt() async throws {
      try await withManager { manager in
        let parent = try #require(try await manager.createSandbox()["id"] as? String)
        // A token in guest RAM (tmpfs) before the snapshot: the scan below must find it.
        let before = "atelier-before-\(Identifier.make(length: 16))"
        #expect(
          try await manager.exec(
            parent, ["command": "echo \(before) > /dev/shm/token; " + Self.startCounter]
          ).status == 200)
        let folder = "\(manager.dataDirectory)/sandboxes/\(parent)"
        var info = stat()
        #expect(stat(folder, &info) == 0 && info.st_uid != 0 && info.st_mode & 0o777 == 0o700)
        #expect(stat("\(folder)/memory", &info) == 0 && info.st_uid != 0, "RAM is a file")
        #expect(stat("\(manager.dataDirectory)/snapshots", &info) == 0 && info.st_mode & 0o077 == 0)
        #expect(
          stat("\(manager.dataDirectory)/atelier.db", &info) == 0 && info.st_mode & 0o077 == 0)
        manager.expectLeastPrivilege(count: 1)
        try await Task.sleep(for: .seconds(1))

        let taken = try await manager.request(.POST, "/api/sandboxes/\(parent)/snapshots")
        #expect(taken.status == 201, "\(taken.text)")
        let first = try #require(taken.json["id"] as? String)
        let pauseMs = try #require(taken.json["pauseMs"] as? Int)
        let totalMs = try #require(taken.json["totalMs"] as? Int)
        #expect(pauseMs <= totalMs)
        let memory = "\(manager.dataDirectory)/snapshots/\(first)/memory"
        #expect(try fileContains(memory, before), "the snapshot's memory file is the guest RAM")
        // Sparse: it holds what the guest touched, not all 256 MiB.
        #expect(stat(memory, &info) == 0 && Int(info.st_blocks) * 512 < 250 << 20)
        let digest = try sha256(memory)

        async let one = manager.createSandbox(["snapshot": first])
        async let two = manager.createSandbox(["snapshot": first])
        let restores = try await [one, two].compactMap { $0["id"] as? String }
        #expect(restores.count == 2)
        for id in restores {
          #expect(stdout(try await manager.exec(id, ["command": "hostname"])) == "sbx-\(id)")
          #expect(stdout(try await manager.exec(id, ["command": "cat /dev/shm/token"])) == before)
          let count = try await counter(manager, id)
          try await Task.sleep(for: .seconds(1))
          #expect(try await counter(manager, id) > count, "the counter counts on")
        }
        // A restore's writes to its memory stay its own: not in the snapshot's file (which no
        // byte of changed), not in its sibling.
        let written = "atelier-written-\(Identifier.make(length: 16))"
        #expect(
          try await manager.exec(restores[0], ["command": "echo \(written) > /dev/shm/mine"])
            .status == 200)
        #expect(
          stdout(try await manager.exec(restores[1], ["command": "cat /dev/shm/mine || echo none"]))
            == "none")
        #expect(try sha256(memory) == digest)
        #expect(try !fileContains(memory, written))
        manager.expectLeastPrivilege(count: 3)

        // A snapshot of a restore holds what the restore wrote; a restore of it, and forks of
        // the restore, continue from there.
        let again = try await manager.request(.POST, "/api/sandboxes/\(restores[0])/snapshots")
        #expect(again.status == 201, "\(again.text)")
        let second = try #require(again.json["id"] as? String)
        #expect(
          try fileContains("\(manager.dataDirectory)/snapshots/\(second)/memory", written))
        let third = try #require(
          try await manager.createSandbox(["snapshot": second])["id"] as? String)
        #expect(stdout(try await manager.exec(third, ["command": "cat /dev/shm/mine"])) == written)
        let count = try await counter(manager, third)
        try await Task.sleep(for: .seconds(1))
        #expect(try await counter(manager, third) > count)
        let fork = try await manager.request(
          .POST, "/api/sandboxes/\(restores[0])/fork", json: ["count": 2])
        #expect(fork.status == 201, "\(fork.text)")
        let forks = (fork.json["sandboxes"] as? [[String: Any]] ?? []).compactMap {
          $0["id"] as? String
        }
        #expect(forks.count == 2)
        for id in forks {
          #expect(stdout(try await manager.exec(id, ["command": "cat /dev/shm/mine"])) == written)
        }
        manager.expectLeastPrivilege(count: 6)

        // Deleting the first snapshot while two restores map its file: they run on, the file
        // stays until both are gone.
        #expect(try await manager.request(.DELETE, "/api/snapshots/\(first)").status == 204)
        #expect(try await manager.request(.GET, "/api/snapshots/\(first)").status == 404)
        #expect(
          try await manager.request(.POST, "/api/sandboxes", json: ["snapshot": first]).status
            == 404)
        #expect(manager.snapshotFolders.contains(first))
        for id in restores {
          #expect(stdout(try await manager.exec(id, ["command": "sync; echo up"])) == "up")
        }
        #expect(try await manager.request(.DELETE, "/api/sandboxes/\(restores[1])").status == 204)
        #expect(manager.snapshotFolders.contains(first))
        #expect(try await manager.request(.DELETE, "/api/sandboxes/\(restores[0])").status == 204)
        #expect(!manager.snapshotFolders.contains(first))
        // The forks' snapshot (hidden from the API) goes with the last fork.
        #expect(manager.snapshotFolders.count == 2)
        for id in forks {
          #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
        }
        #expect(manager.snapshotFolders == [second])

        try await killedDuringASnapshot(manager, parent: parent)

        for id in [third, parent] {
          #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
        }
        #expect(try await manager.request(.DELETE, "/api/snapshots/\(second)").status == 204)
        #expect(try await manager.request(.POST, "/api/system/cleanup").status == 200)
        #expect(manager.snapshotFolders.isEmpty)
        #expect(manager.files(in: "volumes").isEmpty, "\(manager.files(in: "volumes"))")
        #expect(manager.qemuProcesses().isEmpty)
      }
    }

    /// SIGKILL while the manager writes a snapshot: after a restart, no memory file is left of
    /// it, and the sandbox runs (a VM left paused is resumed).
    func killedDuringASnapshot(_ manager: ManagerProcess, parent: String) async throws {
      let known = Set(manager.snapshotFolders)
      let pending = Task {
        try? await manager.request(
          .POST, "/api/sandboxes/\(parent)/snapshots", timeout: .seconds(60),
          retryOnClosedConnection: false)
      }
      let deadline = ContinuousClock.now + .seconds(30)
      while Set(manager.snapshotFolders).subtracting(known).isEmpty
        && ContinuousClock.now < deadline
      {
        try await Task.sleep(for: .milliseconds(2))
      }
      #expect(!Set(manager.snapshotFolders).subtracting(known).isEmpty, "no snapshot started")
      await manager.kill()
      _ = await pending.value
      try await manager.restart()
      #expect(Set(manager.snapshotFolders) == known, "\(manager.snapshotFolders)")
      #expect(try await manager.request(.GET, "/api/snapshots").jsonArray.count == 1)
      let count = try await counter(manager, parent)
      try await Task.sleep(for: .seconds(1))
      #expect(try await counter(manager, parent) > count, "the sandbox runs on")
      manager.expectLeastPrivilege()
    }

    func sha256(_ path: String) throws -> String {
      let handle = try #require(FileHandle(forReadingAtPath: path))
      defer { try? handle.close() }
      var hasher = SHA256()
      while let chunk = try handle.read(upToCount: 8 << 20), !chunk.isEmpty {
        hasher.update(data: chunk)
      }
      return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Whether the file holds `token` (read in chunks that overlap by the token's length).
    func fileContains(_ path: String, _ token: String) throws -> Bool {
      let handle = try #require(FileHandle(forReadingAtPath: path))
      defer { try? handle.close() }
      let needle = Data(token.utf8)
      var carry = Data()
      while let chunk = try handle.read(upToCount: 8 << 20), !chunk.isEmpty {
        let window = carry + chunk
        if window.range(of: needle) != nil { return true }
        carry = window.suffix(needle.count)
      }
      return false
    }
  }
}
