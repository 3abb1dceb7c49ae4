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
    subcommands: [Spawn.self, Agent.self, Snapshot.self, Density.self])

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
      let api = try await apiBoots()
      print(String(format: "bare QEMU: median %.0f ms  (%@)", median(bare), list(bare)))
      print(String(format: "API:       median %.0f ms  (%@)", median(api), list(api)))
      print(String(format: "ratio API/bare: %.3f (goal <= 1.15)", median(api) / median(bare)))
    }

    /// QEMU started directly (the driver, no manager) with the same kernel, initramfs, disk and
    /// devices; timed until the agent answers /health.
    func bareBoots(record: ImageRecord, acceleration: Acceleration, config: Config, scratch: String)
      async throws -> [Double]
    {
      let vmm = QEMUMicroVM(
        binary: config.qemuBinary, acceleration: acceleration, sandboxesDirectory: "\(scratch)/vms")
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
        try FileManager.default.createDirectory(
          atPath: spec.runtimeDirectory, withIntermediateDirectories: true)
        // The agent answers only to its key, as under the manager.
        let key = AgentKey.generate()
        try Data(AgentKeyDrive.contents(key: key)).write(
          to: URL(fileURLWithPath: spec.agentKeyDrive!))
        let started = ContinuousClock.now
        let vm = try await vmm.boot(spec)
        do {
          try await AgentClient(endpoint: network.agent, key: key).waitUntilReady(
            sandboxId: id, timeout: .seconds(120), stillBooting: { vmm.isRunning(vm) })
        } catch {
          await vmm.kill(vm)
          throw error
        }
        times.append(milliseconds(since: started))
        await vmm.kill(vm)
        try? FileManager.default.removeItem(atPath: spec.runtimeDirectory)
        try? FileManager.default.removeItem(atPath: disk)
      }
      return times
    }

    /// POST /api/sandboxes timed from request to 201, then DELETE.
    func apiBoots() async throws -> [Double] {
      try await BenchManager.run { manager in
        var times: [Double] = []
        for _ in 0..<runs {
          let started = ContinuousClock.now
          let sandbox = try await manager.createSandbox(image: image)
          times.append(milliseconds(since: started))
          try await manager.delete(sandbox.id)
        }
        return times
      }
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
      // The sandbox is deleted (and awaited) before the manager stops, whatever happens.
      try await BenchManager.run { try await measure($0) }
    }

    func measure(_ manager: BenchManager) async throws {
      let sandbox = try await manager.createSandbox(image: image)
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
