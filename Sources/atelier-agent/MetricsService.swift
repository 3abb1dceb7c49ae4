import AtelierAgentAPI

#if canImport(Glibc)
  import Glibc
#endif

/// `/metrics`: CPU (sampled over 100 ms), memory, root disk, load, uptime, processes.
enum MetricsService {
  static func cpuTimes() -> (busy: Double, total: Double) {
    guard let line = readTextFile("/proc/stat")?.split(separator: "\n").first else { return (0, 0) }
    let values = line.split(separator: " ").dropFirst().compactMap { Double($0) }
    let total = values.reduce(0, +)
    let idle = values.count > 4 ? values[3] + values[4] : 0
    return (total - idle, total)
  }

  static func meminfo() -> [String: Int64] {
    var result: [String: Int64] = [:]
    for line in (readTextFile("/proc/meminfo") ?? "").split(separator: "\n") {
      let parts = line.split(separator: ":")
      guard parts.count == 2 else { continue }
      let number = parts[1].split(separator: " ").first.flatMap { Int64($0) } ?? 0
      result[String(parts[0])] = number * 1024
    }
    return result
  }

  static func agentRss() -> Int64 {
    for line in (readTextFile("/proc/self/status") ?? "").split(separator: "\n")
    where line.hasPrefix("VmRSS:") {
      return (line.split(separator: " ").dropFirst().first.flatMap { Int64($0) } ?? 0) * 1024
    }
    return 0
  }

  static func collect() async -> GuestMetrics {
    let first = cpuTimes()
    try? await Task.sleep(for: .milliseconds(100))
    let second = cpuTimes()
    let usage =
      second.total > first.total
      ? (second.busy - first.busy) / (second.total - first.total) * 100 : 0
    let memory = meminfo()
    let total = memory["MemTotal"] ?? 0
    let available = memory["MemAvailable"] ?? 0
    var disk = statvfs()
    statvfs("/", &disk)
    let blockSize = Int64(disk.f_frsize)
    let diskTotal = Int64(disk.f_blocks) * blockSize
    let diskFree = Int64(disk.f_bavail) * blockSize
    let load = (readTextFile("/proc/loadavg") ?? "").split(separator: " ").prefix(3).compactMap {
      Double($0)
    }
    let uptime =
      (readTextFile("/proc/uptime") ?? "").split(separator: " ").first.flatMap { Double($0) } ?? 0
    var processes = 0
    if let directory = opendir("/proc") {
      while let entry = readdir(directory) {
        let first = entry.pointee.d_name.0
        if first >= 0x30 && first <= 0x39 { processes += 1 }
      }
      closedir(directory)
    }
    return GuestMetrics(
      cpu: .init(
        count: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), usagePercent: (usage * 10).rounded() / 10),
      memory: .init(totalBytes: total, usedBytes: total - available, availableBytes: available),
      disk: .init(
        path: "/", totalBytes: diskTotal, usedBytes: diskTotal - Int64(disk.f_bfree) * blockSize,
        freeBytes: diskFree),
      load: load, uptimeSeconds: uptime, processCount: processes, agentRssBytes: agentRss())
  }
}
