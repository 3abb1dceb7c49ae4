import AtelierCore
import AtelierHost

/// The host backends a manager drives, chosen by configuration.
public struct HostDrivers: Sendable {
  public var vmm: any VirtualMachineManager
  public var volumes: any VolumeStore
  public var network: any NetworkProvider
  public var images: ImageCatalog
  public var acceleration: AccelerationProbe.Verdict

  public init(
    vmm: any VirtualMachineManager, volumes: any VolumeStore, network: any NetworkProvider,
    images: ImageCatalog, acceleration: AccelerationProbe.Verdict
  ) {
    self.vmm = vmm
    self.volumes = volumes
    self.network = network
    self.images = images
    self.acceleration = acceleration
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
}

enum VolumeNames {
  static func sandbox(_ id: String) -> String { "sandbox-\(id)" }
  static func snapshot(_ id: String) -> String { "snapshot-\(id)" }
  static func sandboxId(fromVolume name: String) -> String? {
    name.hasPrefix("sandbox-") ? String(name.dropFirst("sandbox-".count)) : nil
  }
}
