import Foundation

/// Helpers on /proc shared by VMM backends.
enum HostProcesses {
  static func commandLine(of pid: Int32) -> [String]? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty
    else { return nil }
    return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
  }

  /// Alive and not a zombie.
  static func isAlive(_ pid: Int32) -> Bool {
    guard pid > 0, Foundation.kill(pid, 0) == 0 || errno == EPERM else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return false }
    let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
    return state != "Z" && state != "X"
  }

  /// Live processes whose command line gives `flag` a file `<sandboxes>/<id>/<file>`: the VMs
  /// of the sandboxes under `sandboxesDirectory`, whoever started them.
  static func discover(flag: String, naming file: String, under sandboxesDirectory: String)
    -> [ObservedVM]
  {
    let prefix = sandboxesDirectory.hasSuffix("/") ? sandboxesDirectory : sandboxesDirectory + "/"
    return allPids().compactMap { pid in
      guard let commandLine = commandLine(of: pid),
        let index = commandLine.firstIndex(of: flag), index + 1 < commandLine.count
      else { return nil }
      let path = commandLine[index + 1]
      guard path.hasPrefix(prefix), path.hasSuffix("/\(file)"), isAlive(pid) else { return nil }
      let id = path.dropFirst(prefix.count).split(separator: "/").first.map(String.init) ?? ""
      return ObservedVM(sandboxId: id, pid: pid)
    }
  }

  /// The pid a pid file holds.
  static func pid(inFile path: String) -> Int32? {
    (try? String(contentsOfFile: path, encoding: .utf8))
      .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
  }

  static func allPids() -> [Int32] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
  }

  /// SIGKILL and wait (up to `timeout`) for the process to disappear.
  static func killAndWait(_ pid: Int32, timeout: Duration = .seconds(10)) async {
    guard pid > 0 else { return }
    Foundation.kill(pid, SIGKILL)
    let deadline = ContinuousClock.now + timeout
    while isAlive(pid) && ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(20))
    }
  }
}
