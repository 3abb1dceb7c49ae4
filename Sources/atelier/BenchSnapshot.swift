import ArgumentParser
import AtelierAgentAPI
import AtelierCore
import AtelierHost
import Foundation

extension Bench {
  struct Snapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Cold create vs create-from-snapshot vs resume; snapshot pause and total; fork latency.")
    @Option(help: "Runs of each measurement.") var runs = 5

    func run() async throws {
      try await BenchManager.run { try await measure($0) }
    }

    func measure(_ manager: BenchManager) async throws {
      print(
        "== \(runs) runs each, tiny image, 256 MiB guests; data folder: \(reflinkNote(manager))")
      var cold: [Double] = []
      for _ in 0..<runs {
        var id = ""
        cold.append(try await timed { id = try await manager.createSandbox(image: "tiny").id })
        try await manager.delete(id)
      }
      let parent = try await manager.createSandbox(image: "tiny")
      let snapshot = try await manager.snapshot(parent.id)
      var restored: [Double] = []
      for _ in 0..<runs {
        var id = ""
        restored.append(try await timed { id = try await manager.restore(snapshot.id).id })
        try await manager.delete(id)
      }
      var resumes: [Double] = []
      for _ in 0..<runs {
        try await manager.post("/api/sandboxes/\(parent.id)/pause")
        resumes.append(
          try await timed { try await manager.post("/api/sandboxes/\(parent.id)/resume") })
      }
      print(String(format: "cold create:          p50 %.0f ms  (%@)", median(cold), list(cold)))
      print(
        String(
          format: "create from snapshot: p50 %.0f ms  (%@)  goal <= 300 ms", median(restored),
          list(restored)))
      print(
        String(format: "resume:               p50 %.0f ms  (%@)", median(resumes), list(resumes)))
      print(
        String(
          format: "from-snapshot speed-up: %.1fx (goal >= 12x)", median(cold) / median(restored)))

      for memory in [256, 1024] {
        try await snapshotTimes(manager, memoryMb: memory)
      }
      try await restoredSnapshotTimes(manager, snapshotId: snapshot.id)

      for count in [1, 4] {
        var times: [Double] = []
        for _ in 0..<runs {
          var ids: [String] = []
          times.append(
            try await timed {
              let data = try await manager.post(
                "/api/sandboxes/\(parent.id)/fork", #"{"count":\#(count)}"#, expect: 201)
              ids = try JSONDecoder.atelier.decode(ForkResponse.self, from: data).sandboxes.map(
                \.id)
            })
          for id in ids { try await manager.delete(id) }
        }
        print(
          String(
            format: "fork N=%d: p50 %.0f ms  (%@)  goal <= %d ms", count, median(times),
            list(times), count == 1 ? 500 : 1000))
      }
    }

    /// Pause and total of a snapshot of a booted guest with 60 % of its memory written.
    func snapshotTimes(_ manager: BenchManager, memoryMb: Int) async throws {
      let sandbox = try await manager.createSandbox(image: "tiny", memoryMb: memoryMb)
      // /dev/shm may hold up to half the RAM by default: allow enough for 60 %. Random bytes
      // (nothing for a zero-page check to skip), one MiB made once and copied: the guest's
      // random generator under TCG would take minutes for a GiB.
      let fill = memoryMb * 6 / 10
      let command =
        "mount -o remount,size=90% /dev/shm && head -c 1m /dev/urandom > /tmp/r && i=0 && "
        + "while [ $i -lt \(fill) ]; do cat /tmp/r; i=$((i+1)); done > /dev/shm/fill"
      let filled = try await manager.post(
        "/api/sandboxes/\(sandbox.id)/exec",
        String(
          decoding: try JSONEncoder().encode(
            ExecRequest(command: command, timeoutMs: 900_000, user: "root")), as: UTF8.self))
      let result = try JSONDecoder.atelier.decode(ExecResult.self, from: filled)
      guard result.exitCode == 0 else { throw CLIError("filling memory failed: \(result.stderr)") }
      var pauses: [Double] = []
      var totals: [Double] = []
      for _ in 0..<runs {
        let info = try await manager.snapshot(sandbox.id)
        pauses.append(Double(info.pauseMs ?? -1))
        totals.append(Double(info.totalMs ?? -1))
        _ = try await manager.send(.DELETE, "/api/snapshots/\(info.id)")
      }
      print(
        String(
          format:
            "snapshot of a %d MiB guest (60%% written): pause p50 %.0f ms (%@), total p50 %.0f ms "
            + "= %.2f s per GiB (goals: pause <= 100 ms with reflink, total <= 0.5 s/GiB without)",
          memoryMb, median(pauses), list(pauses), median(totals),
          median(totals) / 1000 * 1024 / Double(memoryMb)))
      try await manager.delete(sandbox.id)
    }

    /// A restored VM runs on a private mapping: its snapshots add the pages it wrote to a copy.
    func restoredSnapshotTimes(_ manager: BenchManager, snapshotId: String) async throws {
      let restored = try await manager.restore(snapshotId)
      var pauses: [Double] = []
      var totals: [Double] = []
      for _ in 0..<runs {
        let info = try await manager.snapshot(restored.id)
        pauses.append(Double(info.pauseMs ?? -1))
        totals.append(Double(info.totalMs ?? -1))
        _ = try await manager.send(.DELETE, "/api/snapshots/\(info.id)")
      }
      print(
        String(
          format: "snapshot of a restored 256 MiB guest: pause p50 %.0f ms (%@), total p50 %.0f ms",
          median(pauses), list(pauses), median(totals)))
      try await manager.delete(restored.id)
    }

    /// Whether the data folder's file system makes reflinks (XFS, btrfs) or copies.
    func reflinkNote(_ manager: BenchManager) -> String {
      let probe = "\(manager.dataDirectory)/reflink-probe"
      FileManager.default.createFile(atPath: probe, contents: Data(count: 4096))
      defer {
        unlink(probe)
        unlink(probe + ".copy")
      }
      let method = try? FileCopy.copy(file: probe, to: probe + ".copy")
      return method == .reflink ? "reflink" : "no reflink (sparse copies)"
    }
  }
}

func timed(_ body: () async throws -> Void) async throws -> Double {
  let started = ContinuousClock.now
  try await body()
  return milliseconds(since: started)
}
