import AtelierAgentAPI
import AtelierProcess

#if canImport(Glibc)
  import Glibc
#endif

/// `/metrics`: CPU (sampled over 100 ms), memory, root disk, load, uptime, processes.
enum MetricsService {
  static func agentRss() -> Int64 {
    for line in (readTextFile("/proc/self/status") ?? "").split(separator: "\n")
    where line.hasPrefix("VmRSS:") {
      return (line.split(separator: " ").dropFirst().first.flatMap { Int64($0) } ?? 0) * 1024
    }
    return 0
  }

  static func collect() async -> GuestMetrics {
    let usage = await ProcStats.cpuUsagePercent()
    let memory = ProcStats.meminfo()
    let total = memory["MemTotal"] ?? 0
    let available = memory["MemAvailable"] ?? 0
    var disk = statvfs()
    statvfs("/", &disk)
    let blockSize = Int64(disk.f_frsize)
    let diskTotal = Int64(disk.f_blocks) * blockSize
    let diskFree = Int64(disk.f_bavail) * blockSize
    let load = ProcStats.loadAverage()
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
        count: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), usagePercent: usage),
      memory: .init(totalBytes: total, usedBytes: total - available, availableBytes: available),
      disk: .init(
        path: "/", totalBytes: diskTotal, usedBytes: diskTotal - Int64(disk.f_bfree) * blockSize,
        freeBytes: diskFree),
      load: load, uptimeSeconds: uptime, processCount: processes, agentRssBytes: agentRss())
  }
}
