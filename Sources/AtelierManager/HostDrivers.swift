import AtelierCore
import AtelierHost
import AtelierStore

/// The host backends a manager drives, chosen by configuration.
public struct HostDrivers: Sendable {
  public var vmm: any VirtualMachineManager
  public var volumes: any VolumeStore
  public var network: any NetworkProvider
  public var images: ImageCatalog
  public var acceleration: AccelerationProbe.Verdict
  /// The disk a sandbox of this image is cloned from (the image file, or its copy on a thin
  /// volume for LVM).
  public var imageDisk: @Sendable (ImageRecord) async throws -> DiskAttachment
  /// Thin pool data and metadata usage in percent, for stores that have a pool.
  public var poolUsage: @Sendable () async -> (data: Double, metadata: Double)?

  public init(
    vmm: any VirtualMachineManager, volumes: any VolumeStore, network: any NetworkProvider,
    images: ImageCatalog, acceleration: AccelerationProbe.Verdict,
    imageDisk: @escaping @Sendable (ImageRecord) async throws -> DiskAttachment = { $0.disk },
    poolUsage: @escaping @Sendable () async -> (data: Double, metadata: Double)? = { nil }
  ) {
    self.vmm = vmm
    self.volumes = volumes
    self.network = network
    self.images = images
    self.acceleration = acceleration
    self.imageDisk = imageDisk
    self.poolUsage = poolUsage
  }
}

/// Host-side state of one sandbox, kept in its row as JSON.
struct SandboxRuntime: Codable, Sendable, Equatable {
  var vm: VMHandle?
  var network: NetworkAttachment?
  var volume: String?
  var disk: DiskAttachment?
  var kernel: GuestKernel?
  var imageBuild: String?
  /// The disk's size in GiB, as given to the VM.
  var diskGb: Int?
  /// What the agent must be shown (`AgentKey`): on its key drive at boot, replaced after a
  /// restore. Never in API answers or logs.
  var agentKey: String?
  /// The egress policy (absent for sandboxes from before it existed: the default applies).
  var policy: NetworkPolicy?
}

enum VolumeNames {
  static func sandbox(_ id: String) -> String { "sandbox-\(id)" }
  static func snapshot(_ id: String) -> String { "snapshot-\(id)" }
  static func sandboxId(fromVolume name: String) -> String? {
    name.hasPrefix("sandbox-") ? String(name.dropFirst("sandbox-".count)) : nil
  }
}

extension AtelierDatabase: AddressLeases {
  public func lease(sandboxId: String, range: ClosedRange<Int>) async throws -> Int {
    guard let octet = try leaseOctet(sandboxId: sandboxId, range: range) else {
      throw AtelierError(.resourceExhausted, "no free address left on the bridge")
    }
    return octet
  }

  public func releaseLease(sandboxId: String) async {
    try? deleteLease(sandboxId: sandboxId)
  }

  public func leaseHolders() async -> [String] {
    (try? leasedSandboxIds()) ?? []
  }
}
