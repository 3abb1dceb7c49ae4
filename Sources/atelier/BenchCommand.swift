import ArgumentParser
import AsyncHTTPClient
import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierProcess
import Foundation
import NIOCore
import NIOHTTP1

/// `atelier bench …`: measurements that compare against a baseline run in the same process.
struct Bench: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Benchmarks (ratios against a baseline measured in the same run).",
    subcommands: [Spawn.self, Agent.self, Snapshot.self])

  struct Spawn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Boot to agent-ready with bare QEMU vs through the API; clone time vs disk size.")
    @Option(help: "Boots of each kind.") var runs = 5
    @Option(help: "Image to boot.") var image = "tiny"

    func run() async throws {
      let config = try loadConfig()
      bootstrapLogging(level: "warning")
      guard let record = ImageCatalog(directory: config.imagesDir).image(named: image) else {
        throw CLIError(
          "image \(image) is not built in \(config.imagesDir); run `atelier images build \(image)`")
      }
      let scratch = "/tmp/atelier-bench-\(Identifier.make(length: 6))"
      try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
      defer { try? FileManager.default.removeItem(atPath: scratch) }

      print("== clone: qcow2 overlay (O(1)) vs qemu-img create (baseline), median of 20")
      for gib in [1, 16] {
        let base = "\(scratch)/base-\(gib)g.img"
        _ = FileManager.default.createFile(atPath: base, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: base))
        try handle.truncate(atOffset: UInt64(gib) << 30)
        try handle.close()
        let store = FileVolumeStore(directory: "\(scratch)/volumes")
        var ours: [Double] = []
        var baseline: [Double] = []
        for index in 0..<20 {
          let started = ContinuousClock.now
          _ = try await store.clone(base: DiskAttachment(path: base, format: .raw), to: "c\(index)")
          ours.append(milliseconds(since: started))
          let qemuStarted = ContinuousClock.now
          let result = try await ProcessRunner.run(
            SpawnOptions(
              executable: "qemu-img",
              arguments: [
                "create", "-q", "-f", "qcow2", "-F", "raw", "-b", base,
                "\(scratch)/q\(index).qcow2",
              ],
              environment: ProcessInfo.processInfo.environment))
          guard result.exitCode == 0 else {
            throw CLIError("qemu-img failed: \(result.stderrText)")
          }
          baseline.append(milliseconds(since: qemuStarted))
          try? FileManager.default.removeItem(atPath: "\(scratch)/q\(index).qcow2")
          try await store.remove("c\(index)")
        }
        print(
          String(
            format: "%2d GiB: atelier clone %.2f ms, qemu-img create %.2f ms (ratio %.3f)", gib,
            median(ours), median(baseline), median(ours) / median(baseline)))
        try FileManager.default.removeItem(atPath: base)
      }

      let verdict = await AccelerationProbe(
        cachePath: "\(config.dataDir)/accel-probe.json", qemuBinary: config.qemuBinary
      ).resolve(config.accel, kernel: record.kernel)
      print("== boot to agent-ready (\(verdict.acceleration.rawValue)), \(runs) runs each")
      let bare = try await bareBoots(
        record: record, acceleration: verdict.acceleration, config: config, scratch: scratch)
      let api = try await apiBoots(config: config, scratch: scratch)
      print(String(format: "bare QEMU: median %.0f ms  (%@)", median(bare), list(bare)))
      print(String(format: "API:       median %.0f ms  (%@)", median(api), list(api)))
      print(String(format: "ratio API/bare: %.3f (goal <= 1.15)", median(api) / median(bare)))
    }

    /// QEMU started directly with the same kernel, initramfs, disk and devices; timed until
    /// the agent answers /health.
    func bareBoots(record: ImageRecord, acceleration: Acceleration, config: Config, scratch: String)
      async throws -> [Double]
    {
      let vmm = QEMUMicroVM(
        binary: config.qemuBinary, acceleration: acceleration, sandboxesDirectory: "\(scratch)/vms",
        runner: SystemCommandRunner())
      var times: [Double] = []
      for index in 0..<runs {
        let id = Identifier.make()
        let disk = "\(scratch)/bare-\(index).qcow2"
        try Qcow2Overlay.create(
          at: disk, backingFile: record.diskPath, backingFormat: .raw,
          virtualSize: UInt64(record.diskBytes))
        let port = try LoopbackPortAllocator().reserve()
        let network = NetworkAttachment(
          backend: .userMode(forwards: [
            .init(hostAddress: "127.0.0.1", hostPort: port, guestPort: AgentProtocol.port)
          ]),
          guestIPv4: "10.0.2.15", prefixLength: 24, gateway: "10.0.2.2", dns: "10.0.2.3",
          agent: .tcp(host: "127.0.0.1", port: port))
        let spec = VMSpec(
          sandboxId: id, runtimeDirectory: "\(scratch)/vms/\(id)",
          kernelPath: record.kernel.kernelPath,
          initrdPath: record.kernel.initrdPath,
          kernelArguments: GuestBootParameters(
            sandboxId: id, hostname: id, ipv4: "10.0.2.15/24", gateway: "10.0.2.2", dns: "10.0.2.3"
          ).kernelArguments,
          disk: DiskAttachment(path: disk, format: .qcow2), vcpus: 1, memoryMb: 256,
          network: network, agentKeyDrive: "\(scratch)/vms/\(id)/\(AgentKeyDrive.fileName)")
        let arguments = vmm.arguments(for: spec)
        try FileManager.default.createDirectory(
          atPath: spec.runtimeDirectory, withIntermediateDirectories: true)
        // The agent answers only to its key, as under the manager.
        let key = AgentKey.generate()
        try Data(AgentKeyDrive.contents(key: key)).write(
          to: URL(fileURLWithPath: spec.agentKeyDrive!))
        let started = ContinuousClock.now
        let launch = try await ProcessRunner.run(
          SpawnOptions(
            executable: config.qemuBinary, arguments: arguments,
            environment: ProcessInfo.processInfo.environment))
        guard launch.exitCode == 0 else { throw CLIError("qemu failed: \(launch.stderrText)") }
        let agent = AgentClient(endpoint: network.agent, key: key)
        try await agent.waitUntilReady(
          sandboxId: id, timeout: .seconds(120), stillBooting: { true })
        times.append(milliseconds(since: started))
        if let pidText = try? String(
          contentsOfFile: "\(spec.runtimeDirectory)/qemu.pid", encoding: .utf8),
          let pid = Int32(pidText.trimmingCharacters(in: .whitespacesAndNewlines))
        {
          kill(pid, SIGKILL)
          while kill(pid, 0) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        }
        try? FileManager.default.removeItem(atPath: disk)
      }
      return times
    }

    /// POST /api/sandboxes timed from request to 201, then DELETE.
    func apiBoots(config: Config, scratch: String) async throws -> [Double] {
      let manager = try await BenchManager.start(config: config, scratch: scratch)
      defer { manager.stop() }
      var times: [Double] = []
      for _ in 0..<runs {
        let started = ContinuousClock.now
        let sandbox = try await manager.createSandbox(image: "tiny")
        times.append(milliseconds(since: started))
        _ = try await manager.send(.DELETE, "/api/sandboxes/\(sandbox.id)")
      }
      return times
    }
  }

  struct Agent: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Exec round trip through the manager vs straight to the agent; file throughput; agent RSS.")
    @Option(help: "Image to boot.") var image = "tiny"
    @Option(help: "Exec round trips of each kind.") var execs = 200
    @Option(help: "Megabytes to upload and download.") var megabytes = 100

    func run() async throws {
      let (manager, scratch) = try await BenchManager.startInScratch()
      defer { manager.stop(removing: scratch) }
      let sandbox = try await manager.createSandbox(image: image)
      defer { Task { _ = try? await manager.send(.DELETE, "/api/sandboxes/\(sandbox.id)") } }
      let agentPort = try manager.agentPort(of: sandbox.id)
      let agent = "http://127.0.0.1:\(agentPort)"
      let key = try manager.agentKey(of: sandbox.id)

      try await Task.sleep(for: .seconds(2))
      let idle = try await manager.send(.GET, "/api/sandboxes/\(sandbox.id)/metrics")
      let metrics = try JSONDecoder().decode(GuestMetrics.self, from: idle.1)
      print(
        String(
          format: "agent RSS at idle: %.1f MiB (goal <= 20)",
          Double(metrics.agentRssBytes) / 1_048_576))

      let body = Data(#"{"argv":["true"]}"#.utf8)
      var direct: [Double] = []
      var proxied: [Double] = []
      for _ in 0..<execs {
        var started = ContinuousClock.now
        _ = try await send(.POST, "\(agent)/exec", token: key, body: body)
        direct.append(milliseconds(since: started))
        started = ContinuousClock.now
        _ = try await manager.send(.POST, "/api/sandboxes/\(sandbox.id)/exec", body: body)
        proxied.append(milliseconds(since: started))
      }
      print("== exec of `true`, \(execs) round trips each")
      print(
        String(
          format: "straight to the agent: p50 %.2f ms, p99 %.2f ms", percentile(direct, 50),
          percentile(direct, 99)))
      print(
        String(
          format: "through the manager:   p50 %.2f ms, p99 %.2f ms", percentile(proxied, 50),
          percentile(proxied, 99)))
      print(
        String(
          format: "ratio manager/agent: p50 %.3f (goal <= 1.5), p99 %.3f",
          percentile(proxied, 50) / percentile(direct, 50),
          percentile(proxied, 99) / percentile(direct, 99)))

      print("== \(megabytes) MB file, through the manager and straight to the agent")
      let payload = Data(
        (0..<(megabytes << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) })
      for (label, base, token) in [
        ("manager", manager.baseURL + "/api/sandboxes/\(sandbox.id)", manager.token),
        ("agent", agent, key),
      ] {
        var started = ContinuousClock.now
        let (status, _) = try await send(
          .PUT, "\(base)/files?path=/root/bench.bin", token: token, body: payload)
        guard status == 201 else { throw CLIError("upload answered \(status)") }
        let up = milliseconds(since: started)
        started = ContinuousClock.now
        let (getStatus, downloaded) = try await send(
          .GET, "\(base)/files?path=/root/bench.bin", token: token, body: nil,
          limit: 2 * payload.count)
        let down = milliseconds(since: started)
        guard getStatus == 200, downloaded == payload else { throw CLIError("download differs") }
        _ = try await send(.DELETE, "\(base)/files?path=/root/bench.bin", token: token, body: nil)
        print(
          String(
            format: "%@: upload %.0f MB/s, download %.0f MB/s",
            label.padding(toLength: 8, withPad: " ", startingAt: 0), Double(megabytes) / up * 1000,
            Double(megabytes) / down * 1000))
      }
    }
  }
}

extension Bench {
  struct Snapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Cold create vs create-from-snapshot vs resume; snapshot time per GiB; fork latency.")
    @Option(help: "Runs of each measurement.") var runs = 5

    func run() async throws {
      let (manager, scratch) = try await BenchManager.startInScratch()
      defer { manager.stop(removing: scratch) }

      func timed(_ body: () async throws -> Void) async throws -> Double {
        let started = ContinuousClock.now
        try await body()
        return milliseconds(since: started)
      }
      func post(_ path: String, _ body: String = "{}", expect: Int = 200) async throws -> Data {
        let (status, data) = try await manager.send(.POST, path, body: Data(body.utf8))
        guard status == expect else {
          throw CLIError("\(path) answered \(status): \(String(decoding: data, as: UTF8.self))")
        }
        return data
      }
      func delete(_ id: String) async throws {
        _ = try await manager.send(.DELETE, "/api/sandboxes/\(id)")
      }

      var cold: [Double] = []
      for _ in 0..<runs {
        var id = ""
        cold.append(try await timed { id = try await manager.createSandbox(image: "tiny").id })
        try await delete(id)
      }
      let parent = try await manager.createSandbox(image: "tiny")
      var snapshotTimes: [Double] = []
      var snapshotId = ""
      snapshotTimes.append(
        try await timed {
          let data = try await post("/api/sandboxes/\(parent.id)/snapshots", expect: 201)
          snapshotId = try JSONDecoder.atelier.decode(SnapshotInfo.self, from: data).id
        })
      var restored: [Double] = []
      for _ in 0..<runs {
        var id = ""
        restored.append(
          try await timed {
            let data = try await post(
              "/api/sandboxes", #"{"snapshot":"\#(snapshotId)"}"#, expect: 201)
            id = try JSONDecoder.atelier.decode(SandboxInfo.self, from: data).id
          })
        try await delete(id)
      }
      var resumes: [Double] = []
      for _ in 0..<runs {
        _ = try await post("/api/sandboxes/\(parent.id)/pause")
        resumes.append(try await timed { _ = try await post("/api/sandboxes/\(parent.id)/resume") })
      }
      print("== \(runs) runs each, tiny image, 256 MiB guests")
      print(String(format: "cold create:          median %.0f ms  (%@)", median(cold), list(cold)))
      print(
        String(
          format: "create from snapshot: median %.0f ms  (%@)", median(restored), list(restored)))
      print(
        String(format: "resume:               median %.0f ms  (%@)", median(resumes), list(resumes))
      )
      print(
        String(
          format: "from-snapshot speed-up: %.2fx (goal >= 4x)", median(cold) / median(restored)))

      for memory in [256, 1024] {
        let sandbox = try await manager.createSandbox(image: "tiny", memoryMb: memory)
        // Touch most of the memory, so the snapshot writes it rather than skipping zero pages.
        _ = try await post(
          "/api/sandboxes/\(sandbox.id)/exec",
          #"{"command":"head -c \#(memory * 6 / 10)m /dev/urandom > /dev/shm/fill"}"#)
        var times: [Double] = []
        for _ in 0..<runs {
          times.append(
            try await timed {
              _ = try await post("/api/sandboxes/\(sandbox.id)/snapshots", expect: 201)
            })
        }
        print(
          String(
            format: "snapshot of a %d MiB guest (60%% filled): median %.0f ms = %.0f ms per GiB",
            memory,
            median(times), median(times) * 1024 / Double(memory)))
        try await delete(sandbox.id)
      }

      for count in [1, 4] {
        var times: [Double] = []
        for _ in 0..<runs {
          var ids: [String] = []
          times.append(
            try await timed {
              let data = try await post(
                "/api/sandboxes/\(parent.id)/fork", #"{"count":\#(count)}"#, expect: 201)
              ids = try JSONDecoder.atelier.decode(ForkResponse.self, from: data).sandboxes.map(
                \.id)
            })
          for id in ids { try await delete(id) }
        }
        print(String(format: "fork N=%d: median %.0f ms  (%@)", count, median(times), list(times)))
      }
      try await delete(parent.id)
    }
  }
}

/// A manager started by a benchmark on a scratch data folder that shares this one's images.
struct BenchManager {
  let baseURL: String
  let token: String
  let pid: Int32
  let dataDirectory: String

  static func start(config: Config, scratch: String) async throws -> BenchManager {
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
          dataDirectory: data)
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    kill(pid, SIGTERM)
    throw CLIError("bench manager did not start (see \(scratch)/manager.log)")
  }

  func stop() { kill(pid, SIGTERM) }

  /// A manager on a new scratch folder (with the configuration's images).
  static func startInScratch() async throws -> (BenchManager, String) {
    let config = try loadConfig()
    bootstrapLogging(level: "warning")
    let scratch = "/tmp/atelier-bench-\(Identifier.make(length: 6))"
    try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
    do {
      return (try await start(config: config, scratch: scratch), scratch)
    } catch {
      try? FileManager.default.removeItem(atPath: scratch)
      throw error
    }
  }

  func stop(removing scratch: String) {
    stop()
    try? FileManager.default.removeItem(atPath: scratch)
  }

  func send(_ method: HTTPMethod, _ path: String, body: Data? = nil) async throws -> (Int, Data) {
    try await atelier.send(method, baseURL + path, token: token, body: body)
  }

  func createSandbox(image: String, memoryMb: Int = 256) async throws -> SandboxInfo {
    let (status, body) = try await send(
      .POST, "/api/sandboxes", body: Data(#"{"image":"\#(image)","memoryMb":\#(memoryMb)}"#.utf8))
    guard status == 201 else {
      throw CLIError("create answered \(status): \(String(decoding: body, as: UTF8.self))")
    }
    return try JSONDecoder.atelier.decode(SandboxInfo.self, from: body)
  }

  /// The loopback port forwarded to a sandbox's agent, from its QEMU command line.
  /// The agent key of a sandbox, from its key drive (the bench's manager is ours).
  func agentKey(of id: String) throws -> String {
    let drive = FileManager.default.contents(
      atPath: "\(dataDirectory)/sandboxes/\(id)/\(AgentKeyDrive.fileName)")
    guard let key = drive.flatMap({ AgentKeyDrive.key(in: Array($0)) }) else {
      throw CLIError("cannot read the agent key of \(id)")
    }
    return key
  }

  func agentPort(of id: String) throws -> Int {
    let pidText = try String(
      contentsOfFile: "\(dataDirectory)/sandboxes/\(id)/qemu.pid", encoding: .utf8)
    let pid = pidText.trimmingCharacters(in: .whitespacesAndNewlines)
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

/// One HTTP request with an optional bearer token; the whole answer.
func send(_ method: HTTPMethod, _ url: String, token: String, body: Data?, limit: Int = 16 << 20)
  async throws -> (Int, Data)
{
  var request = HTTPClientRequest(url: url)
  request.method = method
  if !token.isEmpty { request.headers.add(name: "authorization", value: "Bearer \(token)") }
  if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
  let response = try await HTTPClient.shared.execute(request, timeout: .seconds(300))
  let buffer = try await response.body.collect(upTo: limit)
  return (Int(response.status.code), Data(buffer.readableBytesView))
}

func percentile(_ values: [Double], _ p: Double) -> Double {
  let sorted = values.sorted()
  guard !sorted.isEmpty else { return 0 }
  let index = min(sorted.count - 1, Int((Double(sorted.count) * p / 100).rounded(.up)) - 1)
  return sorted[max(0, index)]
}

func milliseconds(since start: ContinuousClock.Instant) -> Double {
  let elapsed = ContinuousClock.now - start
  return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
}

func median(_ values: [Double]) -> Double {
  let sorted = values.sorted()
  guard !sorted.isEmpty else { return 0 }
  return sorted.count % 2 == 1
    ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

func list(_ values: [Double]) -> String {
  values.map { String(format: "%.0f", $0) }.joined(separator: ", ")
}
