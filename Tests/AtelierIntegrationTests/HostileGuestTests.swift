import Foundation
import Testing

extension VMTests {
  /// What a guest writes is hostile input to the host; a guest cannot fill the host's disk
  /// through its console, and a full data folder refuses new work cleanly.
  @Suite(.timeLimit(.minutes(15)))
  struct HostileGuestTests {
    func stdout(_ answer: HTTPAnswer) -> String {
      (answer.json["stdout"] as? String ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// On XFS (reflink: sandbox disks are raw copies whose every byte is the guest's): guest
    /// root writes a qcow2 header naming another snapshot's frozen disk onto its own disk, and
    /// floods its console. The header changes nothing (the disk still boots as raw, the named
    /// disk is collected once its snapshot is deleted, clean-up leaves nothing); the console
    /// log stays under its cap. Then the file system is filled below the free-space floor:
    /// creates and snapshots are refused with a 429 naming ATELIER_MIN_FREE_GB, and leave
    /// nothing behind; with the room back they work again.
    @Test(
      .disabled(
        if: LoopFileSystem.unavailableReason != nil, "\(LoopFileSystem.unavailableReason ?? "")"))
    func guestWrittenDiskHeadersConsoleFloodsAndAFullDataFolder() async throws {
      let fs = try await LoopFileSystem(kind: "xfs", megabytes: 3072)
      let cap = 256 << 10
      let manager = try await ManagerProcess.start(
        inDataDirectory: fs.mountPoint,
        environment: ["ATELIER_MIN_FREE_GB": "1", "ATELIER_CONSOLE_LOG_BYTES": "\(cap)"])
      do {
        try await checks(manager, fs: fs, cap: cap)
      } catch {
        Issue.record("manager log:\n\(manager.log(lines: 60))")
        await manager.tearDown()
        await fs.tearDown()
        throw error
      }
      await manager.tearDown()
      await fs.tearDown()
    }

    func checks(_ manager: ManagerProcess, fs: LoopFileSystem, cap: Int) async throws {
      // A snapshot of a first sandbox, whose frozen disk only that snapshot needs.
      let first = try #require(try await manager.createSandbox(["diskGb": 1])["id"] as? String)
      #expect(manager.files(in: "volumes") == ["sandbox-\(first).img"], "a raw reflink clone")
      let victim = try await manager.request(.POST, "/api/sandboxes/\(first)/snapshots")
      let victimId = try #require(victim.json["id"] as? String)
      #expect(try await manager.request(.DELETE, "/api/sandboxes/\(first)").status == 204)
      let victimDisk = "\(manager.dataDirectory)/volumes/snapshot-\(victimId).img"
      #expect(FileManager.default.fileExists(atPath: victimDisk))

      // A second sandbox's guest writes a qcow2 header naming that disk as its backing file
      // into its own disk's first KiB (ext4 starts at 1 KiB: the guest stays intact).
      let id = try #require(try await manager.createSandbox(["diskGb": 1])["id"] as? String)
      manager.expectLeastPrivilege(count: 1)
      let header = fakeQcow2Header(backing: victimDisk)
      let written = try await manager.exec(
        id,
        [
          "command": "printf '\(header)' | dd of=/dev/vda bs=512 conv=notrunc 2>/dev/null; sync; "
            + "head -c 4 /dev/vda | od -An -tx1",
          "user": "root",
        ])
      #expect(stdout(written) == "51 46 49 fb", "\(written.text)")
      let raw = "\(manager.dataDirectory)/volumes/sandbox-\(id).img"
      let handle = try #require(FileHandle(forReadingAtPath: raw))
      #expect(try handle.read(upToCount: 4) == Data([0x51, 0x46, 0x49, 0xFB]))
      try handle.close()

      // The console: as much as the guest can write in about 30 s (or 100 MiB).
      let flood = try await manager.exec(
        id,
        [
          "command": """
          chunk=$(head -c 65536 /dev/zero | tr '\\0' A); i=0; start=$(date +%s); \
          while [ $i -lt 1600 ] && [ $(( $(date +%s) - start )) -lt 30 ]; do \
          printf '%s\\n' "$chunk" > /dev/ttyS0; i=$((i+1)); done; \
          echo $i $(( $(date +%s) - start ))
          """,
          "user": "root", "timeoutMs": 60000,
        ])
      let numbers = stdout(flood).split(separator: " ").compactMap { Int($0) }
      let chunks = numbers.first ?? 0
      let seconds = max(1, numbers.last ?? 1)
      print("console flood: \(chunks * 64) KiB in \(seconds) s (\(chunks * 64 / seconds) KiB/s)")
      // More than the cap, so that the cap is what holds the log back.
      #expect(chunks * 65536 > cap, "the guest wrote \(chunks) chunks: \(flood.text)")
      let logs = ["console.log", "console.log.1"].map {
        "\(manager.dataDirectory)/sandboxes/\(id)/\($0)"
      }
      let logged = logs.reduce(0) {
        $0 + ((try? FileManager.default.attributesOfItem(atPath: $1)[.size] as? Int) ?? 0)
      }
      #expect(logged <= cap, "\(logged) bytes of console log")
      #expect(logged > cap / 4, "the relay wrote only \(logged) bytes")
      // The newest output is what the log holds.
      #expect(
        (try? String(contentsOfFile: logs[0], encoding: .utf8))?.suffix(64).contains("AAAA")
          == true)
      // The agent still answers, and the disk still boots as raw after a restart.
      #expect(try await manager.request(.POST, "/api/sandboxes/\(id)/restart").status == 200)
      #expect(stdout(try await manager.exec(id, ["command": "echo alive"])) == "alive")

      // Deleting the snapshot frees its disk: the guest's header keeps nothing alive.
      #expect(try await manager.request(.DELETE, "/api/snapshots/\(victimId)").status == 204)
      #expect(try await manager.request(.POST, "/api/system/cleanup").status == 200)
      #expect(!FileManager.default.fileExists(atPath: victimDisk))

      try await fullDataFolder(manager, fs: fs, sandbox: id)

      #expect(try await manager.request(.DELETE, "/api/sandboxes/\(id)").status == 204)
      #expect(try await manager.request(.POST, "/api/system/cleanup").status == 200)
      #expect(manager.files(in: "volumes").isEmpty, "\(manager.files(in: "volumes"))")
      #expect(manager.files(in: "sandboxes").isEmpty)
      #expect(manager.snapshotFolders.isEmpty)
    }

    /// Below the floor (1 GiB here) creates, restores and snapshots are refused and leave
    /// nothing behind; with the room back they work.
    func fullDataFolder(_ manager: ManagerProcess, fs: LoopFileSystem, sandbox id: String)
      async throws
    {
      let filler = "\(fs.mountPoint)/filler"
      let keep: Int64 = 512 << 20
      try await LoopFileSystem.run(["fallocate", "-l", "\(max(0, fs.freeBytes - keep))", filler])
      #expect(fs.freeBytes < 1 << 30)
      let volumes = manager.files(in: "volumes")
      let folders = manager.files(in: "sandboxes")
      let refusedCreate = try await manager.request(.POST, "/api/sandboxes", json: [:])
      #expect(refusedCreate.status == 429)
      #expect(refusedCreate.json["error"] as? String == "RESOURCE_EXHAUSTED")
      #expect((refusedCreate.json["message"] as? String)?.contains("ATELIER_MIN_FREE_GB") == true)
      let refusedSnapshot = try await manager.request(.POST, "/api/sandboxes/\(id)/snapshots")
      #expect(refusedSnapshot.status == 429, "\(refusedSnapshot.text)")
      #expect((refusedSnapshot.json["message"] as? String)?.contains("ATELIER_MIN_FREE_GB") == true)
      let refusedFork = try await manager.request(
        .POST, "/api/sandboxes/\(id)/fork", json: ["count": 1])
      #expect(refusedFork.status == 429)
      // Nothing was made, nothing was lost: the sandbox runs on.
      #expect(manager.files(in: "volumes") == volumes)
      #expect(manager.files(in: "sandboxes") == folders)
      #expect(manager.snapshotFolders.isEmpty)
      #expect(try await manager.request(.GET, "/api/sandboxes").jsonArray.count == 1)
      #expect(try await manager.request(.GET, "/api/snapshots").jsonArray.isEmpty)
      #expect(stdout(try await manager.exec(id, ["command": "echo still here"])) == "still here")

      try FileManager.default.removeItem(atPath: filler)
      // XFS returns a removed file's blocks in the background.
      try await LoopFileSystem.run(["sync", "-f", fs.mountPoint])
      #expect(await eventually(.seconds(30)) { fs.freeBytes > 1 << 30 })
      let snapshot = try await manager.request(.POST, "/api/sandboxes/\(id)/snapshots")
      #expect(snapshot.status == 201, "\(snapshot.text)")
      let snapshotId = try #require(snapshot.json["id"] as? String)
      let restored = try await manager.createSandbox(["snapshot": snapshotId])
      let restoredId = try #require(restored["id"] as? String)
      #expect(
        stdout(try await manager.exec(restoredId, ["command": "echo restored"])) == "restored")
      #expect(try await manager.request(.DELETE, "/api/sandboxes/\(restoredId)").status == 204)
      #expect(try await manager.request(.DELETE, "/api/snapshots/\(snapshotId)").status == 204)
    }

    /// A qcow2 v3 header (as `printf` escapes) whose backing file is `backing`.
    func fakeQcow2Header(backing: String) -> String {
      var bytes = [UInt8](repeating: 0, count: 512)
      func put(_ value: UInt64, at offset: Int, width: Int) {
        for index in 0..<width {
          bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * (width - 1 - index)))
        }
      }
      put(0x5146_49FB, at: 0, width: 4)
      put(3, at: 4, width: 4)
      put(0x100, at: 8, width: 8)  // backing file name offset
      put(UInt64(backing.utf8.count), at: 16, width: 4)
      put(16, at: 20, width: 4)  // cluster bits
      put(1 << 30, at: 24, width: 8)  // size
      for (index, byte) in backing.utf8.enumerated() { bytes[0x100 + index] = byte }
      return bytes.map { String(format: "\\%03o", $0) }.joined()
    }
  }
}
