import ArgumentParser
import AtelierAgentAPI
import AtelierCore
import AtelierProcess
import Foundation

extension Bench {
  struct Density: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Host memory and CPU per VM: idle restores' PSS vs a cold VM's RSS, QEMU's own overhead, "
        + "idle CPU, and TCG's translation cache size against exec and CPU-bound work.")
    @Option(help: "Idle restores of one snapshot.") var restores = 10
    @Option(help: "Seconds over which idle CPU is measured.") var idleSeconds = 30
    @Option(help: "Exec round trips per cache size.") var execs = 100

    func run() async throws {
      try await BenchManager.run { try await measureMemory($0) }
      print("== TCG translation cache (ATELIER_QEMU_TB_SIZE_MB): exec and CPU-bound work")
      for size in ["0", "32"] {
        try await BenchManager.run(environment: ["ATELIER_QEMU_TB_SIZE_MB": size]) {
          try await measureTranslationCache(
            $0, label: size == "0" ? "QEMU's default" : "\(size) MiB")
        }
      }
    }

    func measureMemory(_ manager: BenchManager) async throws {
      let cold = try await manager.createSandbox(image: "tiny")
      try await Task.sleep(for: .seconds(5))
      let pid = try manager.vmPid(of: cold.id)
      let usage = try MemoryUsage(pid: pid)
      print("== a cold tiny VM (256 MiB), idle")
      print(
        String(
          format:
            "RSS %.1f MiB, of which guest RAM touched %.1f MiB: QEMU's own %.1f MiB (goal <= 40)",
          mib(usage.rss), mib(usage.guestRAM), mib(usage.rss - usage.guestRAM)))
      let cpu = try await idleCPU(pid: pid, seconds: idleSeconds)
      print(String(format: "idle CPU over %d s: %.2f %% of a core (goal <= 2)", idleSeconds, cpu))

      let snapshot = try await manager.snapshot(cold.id)
      var ids: [String] = []
      for _ in 0..<restores { ids.append(try await manager.restore(snapshot.id).id) }
      try await Task.sleep(for: .seconds(5))
      var pss = 0
      var rss = 0
      for id in ids {
        let usage = try MemoryUsage(pid: try manager.vmPid(of: id))
        pss += usage.pss
        rss += usage.rss
      }
      print("== \(restores) idle restores of one 256 MiB snapshot")
      print(
        String(
          format: "summed PSS %.1f MiB (RSS %.1f MiB) = %.2f x one cold VM's RSS (goal <= 3)",
          mib(pss), mib(rss), Double(pss) / Double(usage.rss)))
      let restoredCPU = try await idleCPU(pid: try manager.vmPid(of: ids[0]), seconds: idleSeconds)
      print(String(format: "idle CPU of a restore: %.2f %% of a core", restoredCPU))
      for id in ids + [cold.id] { try await manager.delete(id) }
      _ = try await manager.send(.DELETE, "/api/snapshots/\(snapshot.id)")
    }

    /// Exec p50 of `true`, and a CPU-bound command's time, in a fresh VM.
    func measureTranslationCache(_ manager: BenchManager, label: String) async throws {
      let sandbox = try await manager.createSandbox(image: "tiny")
      let body = Data(#"{"argv":["true"]}"#.utf8)
      var times: [Double] = []
      for _ in 0..<execs {
        let started = ContinuousClock.now
        _ = try await manager.send(.POST, "/api/sandboxes/\(sandbox.id)/exec", body: body)
        times.append(milliseconds(since: started))
      }
      // Compression and checksums: varied guest code, the work TCG translates.
      let heavy = Data(
        #"{"command":"head -c 24m /dev/urandom | gzip -1 | md5sum >/dev/null; dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum >/dev/null","user":"root","timeoutMs":600000}"#
          .utf8)
      var cpu: [Double] = []
      for _ in 0..<3 {
        let started = ContinuousClock.now
        _ = try await manager.send(.POST, "/api/sandboxes/\(sandbox.id)/exec", body: heavy)
        cpu.append(milliseconds(since: started))
      }
      let usage = try MemoryUsage(pid: try manager.vmPid(of: sandbox.id))
      print(
        String(
          format: "%@: exec p50 %.2f ms; CPU-bound command p50 %.0f ms (%@); RSS %.1f MiB "
            + "(QEMU's own %.1f MiB)", label, percentile(times, 50), median(cpu), list(cpu),
          mib(usage.rss), mib(usage.rss - usage.guestRAM)))
      try await manager.delete(sandbox.id)
    }

    /// Percent of one core the process used over `seconds`.
    func idleCPU(pid: Int32, seconds: Int) async throws -> Double {
      let first = try cpuTicks(pid)
      try await Task.sleep(for: .seconds(seconds))
      let second = try cpuTicks(pid)
      return Double(second - first) / Double(sysconf(Int32(_SC_CLK_TCK))) / Double(seconds) * 100
    }

    func cpuTicks(_ pid: Int32) throws -> Int {
      guard let stat = readTextFile("/proc/\(pid)/stat") else {
        throw CLIError("no process \(pid)")
      }
      guard let close = stat.lastIndex(of: ")") else { throw CLIError("bad /proc/\(pid)/stat") }
      let fields = stat[stat.index(close, offsetBy: 2)...].split(separator: " ")
      // utime and stime are fields 14 and 15 of stat (11 and 12 after the command).
      guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else {
        throw CLIError("bad /proc/\(pid)/stat")
      }
      return user + system
    }

    func mib(_ bytes: Int) -> Double { Double(bytes) / 1_048_576 }
  }
}

/// A VM process's memory from /proc: RSS and PSS in all, and the resident part of its guest
/// RAM mapping (the memory file, or a snapshot's file mapped privately).
struct MemoryUsage {
  var rss = 0
  var pss = 0
  var guestRAM = 0

  init(pid: Int32) throws {
    // read(2) to the end: Foundation stops reading /proc files at its first chunk.
    guard let rollup = readTextFile("/proc/\(pid)/smaps_rollup"),
      let smaps = readTextFile("/proc/\(pid)/smaps", limit: 64 << 20)
    else { throw CLIError("cannot read the memory maps of \(pid)") }
    rss = Self.kilobytes("Rss:", in: rollup) * 1024
    pss = Self.kilobytes("Pss:", in: rollup) * 1024
    var inRAM = false
    for line in smaps.split(separator: "\n") {
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      if let first = fields.first, first.contains("-"), first.first?.isHexDigit == true {
        let path = fields.count >= 6 ? String(fields[5]) : ""
        inRAM = path.hasSuffix("/memory") || path.hasSuffix("/memory.base")
      } else if inRAM, fields.first == "Rss:", fields.count > 1, let kb = Int(fields[1]) {
        guestRAM += kb * 1024
      }
    }
  }

  static func kilobytes(_ key: String, in text: String) -> Int {
    for line in text.split(separator: "\n") where line.hasPrefix(key) {
      return Int(
        line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        ?? 0
    }
    return 0
  }
}
