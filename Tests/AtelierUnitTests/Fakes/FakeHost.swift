import AtelierCore
import AtelierStore
import Foundation
import Logging

@testable import AtelierHost
@testable import AtelierManager

/// A `SandboxService` over fake drivers, a real SQLite database and a data folder of its own:
/// the orchestrator exercised in seconds, without VMs.
struct FakeHost {
  let config: Config
  let database: AtelierDatabase
  let faults = FaultPlan()
  let vmm: FakeVMM
  let volumes: FakeVolumeStore
  let network: FakeNetwork
  let service: SandboxService

  init(
    maxSandboxes: Int = 20, minFreeGb: Int = 0, enforcesDestinationLists: Bool = false,
    configure: (inout Config) -> Void = { _ in }
  ) throws {
    let data = NSTemporaryDirectory() + "atelier-fake-\(UUID().uuidString.prefix(8))"
    var config = Config.defaults()
    config.dataDir = data
    config.maxSandboxes = maxSandboxes
    config.minFreeGb = minFreeGb
    // Generous: a fake agent answers at once, but a machine running the whole suite on two
    // cores may not schedule it for seconds.
    config.bootTimeoutSeconds = 30
    configure(&config)
    for directory in [config.sandboxesDir, config.snapshotsDir, config.imagesDir] {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
    try Self.installImage(named: "tiny", in: config)
    self.config = config
    database = try AtelierDatabase(path: config.databasePath)
    vmm = FakeVMM(faults: faults)
    volumes = FakeVolumeStore(directory: "\(data)/volumes", faults: faults)
    network = FakeNetwork(faults: faults, enforcesDestinationLists: enforcesDestinationLists)
    let drivers = HostDrivers(
      vmm: vmm, volumes: volumes, network: network,
      images: ImageCatalog(directory: config.imagesDir),
      acceleration: .init(
        acceleration: .tcg, reason: "fake", kernel: "", qemuBinary: "", probedAt: Date()))
    service = SandboxService(
      config: config, database: database, drivers: drivers,
      logger: Logger(label: "atelier.test"))
  }

  /// A built image as the image builder leaves it (an image.json behind a `current` link).
  static func installImage(named name: String, in config: Config) throws {
    let build = "\(config.imagesDir)/\(name)/builds/b1"
    try FileManager.default.createDirectory(atPath: build, withIntermediateDirectories: true)
    FileManager.default.createFile(atPath: "\(build)/rootfs.img", contents: Data())
    let record = ImageRecord(
      name: name, description: "fake", buildId: "b1",
      kernel: GuestKernel(
        version: "6.1-fake", kernelPath: "\(build)/vmlinuz", initrdPath: "\(build)/initrd"),
      diskPath: "\(build)/rootfs.img", diskBytes: 1 << 20, builtAt: Date(), inputsHash: "x")
    try JSONEncoder.atelier.encode(record).write(to: URL(fileURLWithPath: "\(build)/image.json"))
    try FileManager.default.createSymbolicLink(
      atPath: "\(config.imagesDir)/\(name)/current", withDestinationPath: "builds/b1")
  }

  /// What the host holds besides the database: VMs, volumes, ports, leases, folders.
  struct Leftovers: Equatable, CustomStringConvertible {
    var vms: Int
    var volumes: [String]
    var ports: Int
    var leases: Int
    var folders: [String]
    var description: String {
      "vms \(vms), volumes \(volumes), ports \(ports), leases \(leases), folders \(folders)"
    }
  }

  func leftovers() -> Leftovers {
    Leftovers(
      vms: vmm.running.count, volumes: volumes.names, ports: network.attachedPorts.count,
      leases: network.leased.count,
      folders: (try? FileManager.default.contentsOfDirectory(atPath: config.sandboxesDir)) ?? [])
  }

  static let nothing = Leftovers(vms: 0, volumes: [], ports: 0, leases: 0, folders: [])

  func tearDown() async {
    for vm in vmm.running { await vmm.kill(vm) }
    try? FileManager.default.removeItem(atPath: config.dataDir)
  }
}
