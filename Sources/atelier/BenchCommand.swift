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
    subcommands: [Spawn.self])

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
          network: network)
        let arguments = vmm.arguments(for: spec)
        try FileManager.default.createDirectory(
          atPath: spec.runtimeDirectory, withIntermediateDirectories: true)
        let started = ContinuousClock.now
        let launch = try await ProcessRunner.run(
          SpawnOptions(
            executable: config.qemuBinary, arguments: arguments,
            environment: ProcessInfo.processInfo.environment))
        guard launch.exitCode == 0 else { throw CLIError("qemu failed: \(launch.stderrText)") }
        let agent = AgentClient(endpoint: network.agent)
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

    /// A manager on a scratch data folder sharing this one's images; POST /api/sandboxes timed
    /// from request to 201, then DELETE.
    func apiBoots(config: Config, scratch: String) async throws -> [Double] {
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
      defer { kill(pid, SIGTERM) }
      let base = "http://127.0.0.1:\(port)"
      let deadline = ContinuousClock.now + .seconds(60)
      var token = ""
      while ContinuousClock.now < deadline {
        if let text = try? String(contentsOfFile: "\(data)/admin-token", encoding: .utf8),
          (try? await send(.GET, "\(base)/health", token: "", body: nil))?.0 == 200
        {
          token = text.trimmingCharacters(in: .whitespacesAndNewlines)
          break
        }
        try await Task.sleep(for: .milliseconds(100))
      }
      guard !token.isEmpty else {
        throw CLIError("bench manager did not start (see \(scratch)/manager.log)")
      }
      var times: [Double] = []
      for _ in 0..<runs {
        let started = ContinuousClock.now
        let (status, body) = try await send(
          .POST, "\(base)/api/sandboxes", token: token, body: Data("{}".utf8))
        guard status == 201 else {
          throw CLIError("create answered \(status): \(String(decoding: body, as: UTF8.self))")
        }
        times.append(milliseconds(since: started))
        let sandbox = try JSONDecoder.atelier.decode(SandboxInfo.self, from: body)
        _ = try await send(.DELETE, "\(base)/api/sandboxes/\(sandbox.id)", token: token, body: nil)
      }
      return times
    }

    func send(_ method: HTTPMethod, _ url: String, token: String, body: Data?) async throws -> (
      Int, Data
    ) {
      var request = HTTPClientRequest(url: url)
      request.method = method
      if !token.isEmpty { request.headers.add(name: "authorization", value: "Bearer \(token)") }
      if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(300))
      let buffer = try await response.body.collect(upTo: 16 << 20)
      return (Int(response.status.code), Data(buffer.readableBytesView))
    }
  }
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
