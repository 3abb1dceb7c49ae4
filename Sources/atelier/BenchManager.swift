import AsyncHTTPClient
import AtelierCore
import AtelierHost
import AtelierProcess
import Foundation
import NIOHTTP1

/// A manager started by a benchmark on a scratch data folder that shares this one's images.
/// `run` always cleans up: every sandbox and snapshot is deleted through the API before the
/// manager stops (VMs outlive a stopped manager by design), any VM process left in the scratch
/// folder is killed, and the folder goes.
struct BenchManager {
  let baseURL: String
  let token: String
  let pid: Int32
  let scratch: String
  let dataDirectory: String

  /// Runs `body` with a manager on a new scratch folder (`environment` added to its own).
  static func run<T>(
    environment: [String: String] = [:], _ body: (BenchManager) async throws -> T
  ) async throws -> T {
    let config = try loadConfig()
    bootstrapLogging(level: "warning")
    let scratch = "/tmp/atelier-bench-\(Identifier.make(length: 6))"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    let manager: BenchManager
    do {
      manager = try await start(config: config, scratch: scratch, environment: environment)
    } catch {
      await removeScratch(scratch)
      throw error
    }
    do {
      let result = try await body(manager)
      await manager.shutDown()
      return result
    } catch {
      await manager.shutDown()
      throw error
    }
  }

  static func start(config: Config, scratch: String, environment extra: [String: String] = [:])
    async throws -> BenchManager
  {
    let data = "\(scratch)/manager"
    try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/images", withDestinationPath: config.imagesDir)
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/kernels", withDestinationPath: config.kernelsDir)
    if FileManager.default.fileExists(atPath: "\(config.dataDir)/accel-probe.json") {
      try FileManager.default.copyItem(
        atPath: "\(config.dataDir)/accel-probe.json", toPath: "\(data)/accel-probe.json")
    }
    let port = try LoopbackPortAllocator().reserve()
    var environment = ProcessInfo.processInfo.environment
    environment["ATELIER_DATA_DIR"] = data
    environment["ATELIER_SERVER_PORT"] = String(port)
    environment["ATELIER_LOG_LEVEL"] = "warning"
    for (key, value) in extra { environment[key] = value }
    let log = open("\(scratch)/manager.log", O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    let pid = try ProcessReaper.shared.spawn(
      SpawnOptions(
        executable: "/proc/self/exe", arguments: ["serve"], environment: environment, stdout: log,
        stderr: log))
    close(log)
    let base = "http://127.0.0.1:\(port)"
    let deadline = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < deadline {
      if let text = try? String(contentsOfFile: "\(data)/admin-token", encoding: .utf8),
        (try? await atelier.send(.GET, "\(base)/health", token: "", body: nil))?.0 == 200
      {
        return BenchManager(
          baseURL: base, token: text.trimmingCharacters(in: .whitespacesAndNewlines), pid: pid,
          scratch: scratch, dataDirectory: data)
      }
      guard ProcessReaper.shared.isRunning(pid) else { break }
      try await Task.sleep(for: .milliseconds(100))
    }
    kill(pid, SIGKILL)
    _ = await ProcessReaper.shared.waitForExit(pid)
    throw CLIError("bench manager did not start (see \(scratch)/manager.log)")
  }

  /// Deletes what the benchmark made, stops the manager, and removes the scratch folder.
  func shutDown() async {
    if let (status, body) = try? await send(.GET, "/api/sandboxes"), status == 200,
      let sandboxes = try? JSONDecoder.atelier.decode([SandboxInfo].self, from: body)
    {
      for sandbox in sandboxes { _ = try? await send(.DELETE, "/api/sandboxes/\(sandbox.id)") }
    }
    if let (status, body) = try? await send(.GET, "/api/snapshots"), status == 200,
      let snapshots = try? JSONDecoder.atelier.decode([SnapshotInfo].self, from: body)
    {
      for snapshot in snapshots { _ = try? await send(.DELETE, "/api/snapshots/\(snapshot.id)") }
    }
    kill(pid, SIGTERM)
    _ = await ProcessReaper.shared.waitForExit(pid)
    await Self.removeScratch(scratch)
  }

  /// Kills any VM process still running from `scratch`, then removes it.
  static func removeScratch(_ scratch: String) async {
    for pid in HostProcessList.pids(mentioning: scratch + "/") {
      kill(pid, SIGKILL)
      while kill(pid, 0) == 0 { try? await Task.sleep(for: .milliseconds(10)) }
    }
    try? FileManager.default.removeItem(atPath: scratch)
  }

  func send(_ method: HTTPMethod, _ path: String, body: Data? = nil) async throws -> (Int, Data) {
    try await atelier.send(method, baseURL + path, token: token, body: body)
  }

  /// POST that must answer `expect`; its body.
  @discardableResult
  func post(_ path: String, _ body: String = "{}", expect: Int = 200) async throws -> Data {
    let (status, data) = try await send(.POST, path, body: Data(body.utf8))
    guard status == expect else {
      throw CLIError("\(path) answered \(status): \(String(decoding: data, as: UTF8.self))")
    }
    return data
  }

  func delete(_ id: String) async throws {
    _ = try await send(.DELETE, "/api/sandboxes/\(id)")
  }

  func createSandbox(image: String, memoryMb: Int = 256) async throws -> SandboxInfo {
    let (status, body) = try await send(
      .POST, "/api/sandboxes", body: Data(#"{"image":"\#(image)","memoryMb":\#(memoryMb)}"#.utf8))
    guard status == 201 else {
      throw CLIError("create answered \(status): \(String(decoding: body, as: UTF8.self))")
    }
    return try JSONDecoder.atelier.decode(SandboxInfo.self, from: body)
  }

  func restore(_ snapshotId: String) async throws -> SandboxInfo {
    let data = try await post("/api/sandboxes", #"{"snapshot":"\#(snapshotId)"}"#, expect: 201)
    return try JSONDecoder.atelier.decode(SandboxInfo.self, from: data)
  }

  func snapshot(_ id: String) async throws -> SnapshotInfo {
    let data = try await post("/api/sandboxes/\(id)/snapshots", expect: 201)
    return try JSONDecoder.atelier.decode(SnapshotInfo.self, from: data)
  }

  /// The pid of a sandbox's VM process (from its pid file).
  func vmPid(of id: String) throws -> Int32 {
    let text = try String(
      contentsOfFile: "\(dataDirectory)/sandboxes/\(id)/qemu.pid", encoding: .utf8)
    guard let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
      throw CLIError("no pid for \(id)")
    }
    return pid
  }

  /// The agent key of a sandbox, from its key drive (the bench's manager is ours).
  func agentKey(of id: String) throws -> String {
    let drive = FileManager.default.contents(
      atPath: "\(dataDirectory)/sandboxes/\(id)/\(AgentKeyDrive.fileName)")
    guard let key = drive.flatMap({ AgentKeyDrive.key(in: Array($0)) }) else {
      throw CLIError("cannot read the agent key of \(id)")
    }
    return key
  }

  /// The loopback port forwarded to a sandbox's agent, from its QEMU command line.
  func agentPort(of id: String) throws -> Int {
    let pid = try vmPid(of: id)
    let commandLine = String(
      decoding: (FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()).map {
        $0 == 0 ? 32 : $0
      }, as: UTF8.self)
    guard let range = commandLine.range(of: "hostfwd=tcp:127.0.0.1:"),
      let port = Int(commandLine[range.upperBound...].prefix { $0.isNumber })
    else { throw CLIError("cannot find the agent port of \(id)") }
    return port
  }
}

/// Processes on this host, by what their command lines name.
enum HostProcessList {
  static func pids(mentioning text: String) -> [Int32] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap(Int32.init)
      .filter { pid in
        guard pid != getpid(),
          let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")
        else { return false }
        return String(decoding: data, as: UTF8.self).contains(text)
      }
  }
}
