import AtelierCore
import AtelierHost
import AtelierManager
import AtelierProcess
import AtelierStore
import Foundation
import Hummingbird
import Logging

/// `atelier serve`: prepares the data folder, database, admin token and drivers, reconciles,
/// then serves until SIGTERM/SIGINT. VMs keep running when the manager stops.
public enum ManagerBootstrap {
  public static func run(config: Config, logger: Logger) async throws {
    ProcessReaper.shared.adoptOrphans()
    let fileManager = FileManager.default
    for directory in [
      config.dataDir, config.sandboxesDir, config.imagesDir, config.kernelsDir, config.logsDir,
      config.cacheDir, config.snapshotsDir, volumesDirectory(config),
    ] {
      try fileManager.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
    chmod(config.dataDir, 0o700)
    let database = try AtelierDatabase(path: config.databasePath)
    if let token = try AdminToken.ensure(database: database, path: config.adminTokenPath) {
      logger.notice("created the admin API token in \(config.adminTokenPath)")
      _ = token
    }
    let runner = SystemCommandRunner()
    // VMs run as a user of their own when the manager is root (created if missing); it may
    // pass through the data folder to what VMs open, and read nothing else there.
    let vmUser = try await VMUser.ensure(named: config.vmUser, runner: runner)
    try vmUser?.prepareDataDirectory(config, volumesDirectory: volumesDirectory(config))
    let qemuPath = findExecutable(config.qemuBinary)
    let kernel = KernelProvider(
      kernelsDirectory: config.kernelsDir, cacheDirectory: config.cacheDir, runner: runner
    ).installed()
    let acceleration = await AccelerationProbe(
      cachePath: "\(config.dataDir)/accel-probe.json", qemuBinary: config.qemuBinary
    ).resolve(config.accel, kernel: kernel)
    logger.info("acceleration \(acceleration.acceleration.rawValue): \(acceleration.reason)")
    let drivers = try await makeDrivers(
      config: config, database: database, runner: runner, acceleration: acceleration,
      kernel: kernel, vmUser: vmUser, logger: logger)
    let service = SandboxService(
      config: config, database: database, drivers: drivers,
      logger: Logger(label: "atelier.sandboxes"))
    let app = ManagerServer.buildApplication(
      .init(
        config: config, service: service, database: database, drivers: drivers,
        qemuPath: qemuPath),
      logger: logger)
    try await app.runService()
  }

  public static func volumesDirectory(_ config: Config) -> String { "\(config.dataDir)/volumes" }

  /// `ATELIER_FIRECRACKER_JAILER`: the jailer and the user it runs Firecracker as.
  static func firecrackerJail(_ config: Config) throws -> FirecrackerJail? {
    guard !config.firecrackerJailer.isEmpty else { return nil }
    guard let jailer = findExecutable(config.firecrackerJailer) else {
      throw ConfigError(
        key: "ATELIER_FIRECRACKER_JAILER", source: nil,
        message: "\(config.firecrackerJailer): not found or not executable")
    }
    guard let user = getpwnam(config.jailerUser) else {
      throw ConfigError(
        key: "ATELIER_JAILER_USER", source: nil,
        message: "\(config.jailerUser): no such user (atelier init creates `atelier`)")
    }
    return FirecrackerJail(jailerBinary: jailer, uid: user.pointee.pw_uid, gid: user.pointee.pw_gid)
  }

  /// `ATELIER_QEMU_VSOCK`: `auto` uses vhost-vsock where the host has it, `on` insists.
  static func qemuAgentOverVsock(_ config: Config, logger: Logger) throws -> Bool {
    let usable = QEMUMicroVM.vhostVsockUsable()
    switch config.qemuVsock {
    case .off: return false
    case .auto:
      logger.info(
        usable
          ? "QEMU agents over vhost-vsock"
          : "no /dev/vhost-vsock: QEMU agents over a loopback forward")
      return usable
    case .on:
      guard usable else {
        throw ConfigError(
          key: "ATELIER_QEMU_VSOCK", source: nil,
          message: "on: /dev/vhost-vsock is missing or not usable (modprobe vhost_vsock)")
      }
      return true
    }
  }

  /// The backends the configuration asks for (`ATELIER_VMM`, `ATELIER_STORAGE`,
  /// `ATELIER_NETWORK`), with the host prepared for them.
  static func makeDrivers(
    config: Config, database: AtelierDatabase, runner: any CommandRunning,
    acceleration: AccelerationProbe.Verdict, kernel: GuestKernel?, vmUser: VMUser?,
    logger: Logger
  ) async throws -> HostDrivers {
    if config.vmm == .firecracker && config.network == .user {
      throw ConfigError(
        key: "ATELIER_NETWORK", source: nil,
        message: "user: Firecracker has no user-mode networking; use bridge")
    }
    let vmm: any VirtualMachineManager
    var agentOverVsock = config.vmm == .firecracker
    var jail: FirecrackerJail?
    switch config.vmm {
    case .qemu:
      agentOverVsock = try qemuAgentOverVsock(config, logger: logger)
      vmm = QEMUMicroVM(
        binary: config.qemuBinary, acceleration: acceleration.acceleration,
        sandboxesDirectory: config.sandboxesDir, vhostVsock: agentOverVsock, user: vmUser,
        consoleCapBytes: config.consoleLogBytes, translationCacheMb: config.qemuTbSizeMb)
    case .firecracker:
      jail = try firecrackerJail(config)
      vmm = FirecrackerVMM(
        binary: jail == nil
          ? config.firecrackerBin : findExecutable(config.firecrackerBin) ?? config.firecrackerBin,
        sandboxesDirectory: config.sandboxesDir, jail: jail,
        consoleCapBytes: config.consoleLogBytes)
      if let kernel {
        _ = try await KernelProvider(
          kernelsDirectory: config.kernelsDir, cacheDirectory: config.cacheDir, runner: runner
        ).ensureVmlinux(kernel)
      }
    }
    let network: any NetworkProvider
    switch config.network {
    case .user:
      network = UserModeNetwork(agentOverVsock: agentOverVsock)
      try await filterUserModeEgress(
        config: config, vmUid: vmUser?.uid, runner: runner, logger: logger)
    case .bridge:
      try await BridgeSetup(config: config, runner: runner).apply()
      network = BridgeNetwork(
        bridge: config.bridgeName, bridgeIp: config.bridgeIp, guestIpStart: config.guestIpStart,
        dns: config.guestDns, defaultDeny: config.egressDeny, leases: database,
        agentAccess: agentOverVsock ? .vsock : .privateInterface,
        tapOwner: jail.map { ($0.uid, $0.gid) }, runner: runner)
    }
    let images = ImageCatalog(directory: config.imagesDir)
    switch config.storage {
    case .file:
      return HostDrivers(
        // Disk sizes come with each clone (the request's, else ATELIER_DISK_SIZE_GB).
        vmm: vmm,
        volumes: FileVolumeStore(
          directory: volumesDirectory(config), owner: config.vmm == .qemu ? vmUser : nil),
        network: network, images: images, acceleration: acceleration)
    case .lvm:
      let store = LVMThinVolumeStore(
        volumeGroup: config.lvmVg, thinPool: config.lvmPool, runner: runner)
      return HostDrivers(
        vmm: vmm, volumes: store, network: network, images: images, acceleration: acceleration,
        imageDisk: { image in
          // One thin volume per image build, imported on first use.
          try await store.importImage(
            name: "\(image.name)-\(image.buildId)", from: image.diskPath,
            sizeBytes: UInt64(image.diskBytes))
        },
        poolUsage: {
          guard let usage = try? await store.poolUsage() else { return nil }
          return (usage.dataPercent, usage.metadataPercent)
        })
    }
  }

  /// User-mode guests with `internet: true` are filtered by the uid of the VM user: only a
  /// root manager whose VMs run as a user of their own can do it (see `UserModeFirewall`).
  static func filterUserModeEgress(
    config: Config, vmUid: UInt32?, runner: any CommandRunning, logger: Logger
  ) async throws {
    guard geteuid() == 0 else {
      logger.warning(
        """
        not root: user-mode guests with internet reach every address of this host (nothing \
        can filter them); ATELIER_GUEST_INTERNET=false, bridge networking or root fix it
        """)
      return
    }
    guard let vmUid, vmUid != 0 else {
      logger.warning("VMs run as root: user-mode egress cannot be filtered by their uid")
      return
    }
    try await UserModeFirewall(config: config, uid: vmUid, runner: runner).apply()
  }

  /// `name` if it is a path to an executable, else the first match in PATH or the sbin
  /// folders (the one lookup of `HostTools`, which the command runner uses too).
  public static func findExecutable(_ name: String) -> String? {
    HostTools().find(name)
  }
}
