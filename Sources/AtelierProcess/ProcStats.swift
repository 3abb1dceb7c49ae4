#if canImport(Glibc)
  import Glibc
#endif

/// A small text file read whole (a /proc file, a config file), or nil when it cannot be
/// opened. Plain read(2): /proc files report size 0, and the guest agent has no Foundation.
public func readTextFile(_ path: String, limit: Int = 1 << 20) -> String? {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { return nil }
  defer { close(fd) }
  var result: [UInt8] = []
  var buffer = [UInt8](repeating: 0, count: 16384)
  while result.count < limit {
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    if n <= 0 { break }
    result += buffer[0..<n]
  }
  return String(decoding: result, as: UTF8.self)
}

/// CPU, memory and load of the machine this runs on, from /proc (the host for the manager's
/// stats, the guest for the agent's metrics).
public enum ProcStats {
  /// Busy and total CPU time since boot, from the first line of /proc/stat.
  public static func cpuTimes() -> (busy: Double, total: Double) {
    guard let line = readTextFile("/proc/stat")?.split(separator: "\n").first else { return (0, 0) }
    let values = line.split(separator: " ").dropFirst().compactMap { Double($0) }
    let total = values.reduce(0, +)
    let idle = values.count > 4 ? values[3] + values[4] : 0
    return (total - idle, total)
  }

  /// CPU use over `interval`, in percent with one decimal.
  public static func cpuUsagePercent(over interval: Duration = .milliseconds(100)) async -> Double {
    let first = cpuTimes()
    try? await Task.sleep(for: interval)
    let second = cpuTimes()
    guard second.total > first.total else { return 0 }
    let usage = (second.busy - first.busy) / (second.total - first.total) * 100
    return (usage * 10).rounded() / 10
  }

  /// /proc/meminfo, in bytes.
  public static func meminfo() -> [String: Int64] {
    var result: [String: Int64] = [:]
    for line in (readTextFile("/proc/meminfo") ?? "").split(separator: "\n") {
      let parts = line.split(separator: ":")
      guard parts.count == 2 else { continue }
      let number = parts[1].split(separator: " ").first.flatMap { Int64($0) } ?? 0
      result[String(parts[0])] = number * 1024
    }
    return result
  }

  /// The 1, 5 and 15 minute load averages.
  public static func loadAverage() -> [Double] {
    (readTextFile("/proc/loadavg") ?? "").split(separator: " ").prefix(3).compactMap {
      Double($0)
    }
  }
}
