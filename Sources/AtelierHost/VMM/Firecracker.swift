import AtelierProcess
import Foundation
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The Firecracker backend: one `firecracker` process per VM, configured through its API
/// socket, a TAP device for the network and a hybrid vsock for the agent. The process runs in
/// its own session, so it survives a manager restart.
///
/// The process's working directory is the runtime directory, and the disk and the vsock socket
/// are given to Firecracker by relative names (`rootfs`, a symlink to the disk, and
/// `vsock.sock`). A snapshot records those names as given, so a restore started in another
/// runtime directory opens its own disk and binds its own socket: two restores of one snapshot
/// never collide, on any Firecracker version (`vsock_override` exists only from 1.16, and
/// drives have no override at all).
public struct FirecrackerVMM: VMProcessBackend {
  public let name = "firecracker"
  public let bootsUncompressedKernel = true
  let binary: String
  /// Root of all runtime directories; how `discover` recognises our processes.
  let sandboxesDirectory: String
  let environment: [String: String]
  let startTimeout: Duration
  /// Run under the jailer (chroot, dropped privileges), or directly.
  let jail: FirecrackerJail?
  public let consoleCapBytes: Int
  let logger: Logger

  /// The guest's vsock CID (0–2 are reserved; each VM has its own device, so all use 3).
  public static let guestCID = 3
  static let driveId = "rootfs"
  static let keyDriveId = "agentkey"
  /// The key drive, relative to the process's directory (where the manager writes it).
  static let keyDriveName = "agent-key.img"
  static let interfaceId = "eth0"
  static let diskLinkName = "rootfs"
  static let vsockSocketName = "vsock.sock"
  static let apiSocketName = "firecracker.sock"

  public init(
    binary: String = "firecracker", sandboxesDirectory: String,
    environment: [String: String] = ProcessInfo.processInfo.environment,
    startTimeout: Duration = .seconds(10), jail: FirecrackerJail? = nil,
    consoleCapBytes: Int = ConsoleLog.defaultCapBytes,
    logger: Logger = Logger(label: "atelier.vmm.firecracker")
  ) {
    self.binary = binary
    self.sandboxesDirectory = sandboxesDirectory
    self.environment = environment
    self.startTimeout = startTimeout
    self.jail = jail
    self.consoleCapBytes = consoleCapBytes
    self.logger = logger
  }

  /// Where the process's own files (API and vsock sockets, disk) are: the runtime directory,
  /// or under the jailer the chroot (through its link in the runtime directory).
  public func workDirectory(_ runtimeDirectory: String) -> String {
    jail == nil ? runtimeDirectory : FirecrackerJail.rootLink(runtimeDirectory)
  }

  /// The API socket of the VM whose process files are in `workDirectory`.
  public static func apiSocket(_ workDirectory: String) -> String {
    "\(workDirectory)/\(apiSocketName)"
  }
  public func pidFile(_ runtimeDirectory: String) -> String { Self.pidFile(runtimeDirectory) }
  static func pidFile(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/firecracker.pid"
  }
  static func diskLink(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/\(diskLinkName)"
  }
  /// The host end of the VM's hybrid vsock (what `AgentEndpoint.hybridVsock` names).
  public static func vsockSocket(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/\(vsockSocketName)"
  }
  /// What `saveState` writes into a snapshot's folder: the memory file and the microVM state.
  static let memoryName = "memory"
  static let devicesName = "devices.state"

  /// The hybrid vsock socket in the VM's runtime directory (every VM and restore has its own).
  public func vsockEndpoint(port: Int, runtimeDirectory: String) -> AgentEndpoint {
    .hybridVsock(path: Self.vsockSocket(workDirectory(runtimeDirectory)), port: port)
  }

  /// Serial console, quiet boot, and a reboot or panic that ends the process (`reboot=k`:
  /// Firecracker exits on the keyboard controller reset). The i8042 options skip probing what
  /// Firecracker does not emulate; it adds `pci=off` itself.
  public func kernelCommandLine(_ spec: VMSpec) -> String {
    let arguments = [
      "console=ttyS0", "quiet", "loglevel=3", "reboot=k", "panic=-1", "i8042.noaux",
      "i8042.nomux", "i8042.dumbkbd", "swiotlb=noforce", "random.trust_cpu=on",
    ]
    return (arguments + spec.kernelArguments).joined(separator: " ")
  }

  // MARK: Boot

  public func boot(_ spec: VMSpec) async throws -> VMHandle {
    let tap = try Self.tapDevice(spec)
    try Self.checkDisk(spec.disk)
    let handle = try await launch(spec)
    do {
      try await configure(spec, tap: tap, api: api(spec.runtimeDirectory))
    } catch {
      await terminate(handle)
      throw VMMError(
        "firecracker did not boot: \(error)",
        consoleTail: consoleTail(
          runtimeDirectory: spec.runtimeDirectory, lines: ConsoleLog.tailLines))
    }
    logger.info(
      "firecracker started", metadata: ["sandbox": "\(spec.sandboxId)", "pid": "\(handle.pid)"])
    return handle
  }

  /// The TAP device of `spec`: Firecracker has no user-mode networking.
  static func tapDevice(_ spec: VMSpec) throws -> (device: String, mac: String) {
    switch spec.network.backend {
    case .tap(let device, let mac): return (device, mac)
    case .userMode:
      throw VMMError(
        "the firecracker backend needs a TAP device (bridge networking): Firecracker has no "
          + "user-mode networking")
    }
  }

  /// Firecracker reads raw disks only (a file or a block device).
  static func checkDisk(_ disk: DiskAttachment) throws {
    guard disk.format == .raw else {
      throw VMMError(
        "the firecracker backend needs a raw disk, not \(disk.format.rawValue) (\(disk.path))")
    }
  }

  /// Configures a fresh Firecracker process listening on `api` to boot `spec`, then starts it.
  /// The disk and vsock paths are relative to the process's working directory.
  func configure(_ spec: VMSpec, tap: (device: String, mac: String), api: FirecrackerClient)
    async throws
  {
    // Jailed, the kernel and initrd are in the chroot (placed by `FirecrackerJail.prepare`).
    let kernel = jail == nil ? spec.kernelPath : "/\(FirecrackerJail.kernelName)"
    let initrd = jail == nil ? spec.initrdPath : "/\(FirecrackerJail.initrdName)"
    try await call {
      try await api.putMachineConfiguration(
        FirecrackerMachineConfig(vcpuCount: spec.vcpus, memSizeMib: spec.memoryMb))
      try await api.putBootSource(
        FirecrackerBootSource(
          kernelImagePath: kernel, initrdPath: spec.initrdPath.isEmpty ? nil : initrd,
          bootArgs: kernelCommandLine(spec)))
      try await api.putDrive(
        FirecrackerDrive(
          driveId: Self.driveId, pathOnHost: Self.diskLinkName, isRootDevice: true,
          isReadOnly: false))
      if spec.agentKeyDrive != nil {
        try await api.putDrive(
          FirecrackerDrive(
            driveId: Self.keyDriveId, pathOnHost: Self.keyDriveName, isRootDevice: false,
            isReadOnly: true))
      }
      try await api.putNetworkInterface(
        FirecrackerNetworkInterface(
          ifaceId: Self.interfaceId, hostDevName: tap.device, guestMac: tap.mac))
      try await api.putVsock(
        FirecrackerVsock(guestCid: Self.guestCID, udsPath: Self.vsockSocketName))
      try await api.createSyncAction(FirecrackerAction(actionType: .instanceStart))
    }
  }

  /// Starts `firecracker` (or the jailer, which becomes it) in the runtime directory, writes
  /// its pid file and waits for its API socket. Throws (leaving no process) when it exits or
  /// never listens.
  func launch(_ spec: VMSpec, jailFiles: [(source: String, name: String)] = []) async throws
    -> VMHandle
  {
    let dir = spec.runtimeDirectory
    let files = FileManager.default
    try files.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for stale in [
      Self.pidFile(dir), Self.apiSocket(dir), Self.vsockSocket(dir), Self.diskLink(dir),
    ] {
      try? files.removeItem(atPath: stale)
    }
    let executable: String
    let arguments: [String]
    if let jail {
      try jail.prepare(spec, firecracker: binary, extraFiles: jailFiles)
      executable = jail.jailerBinary
      arguments = jail.arguments(
        firecracker: binary, sandboxId: spec.sandboxId, runtimeDirectory: dir)
    } else {
      try files.createSymbolicLink(
        atPath: Self.diskLink(dir), withDestinationPath: spec.disk.path)
      executable = binary
      arguments = ["--api-sock", Self.apiSocket(dir), "--id", spec.sandboxId]
    }
    let apiSocket = Self.apiSocket(workDirectory(dir))
    // Its serial console and its own messages go to the capped console relay.
    let pid: Int32
    do {
      let console = try ConsoleRelays.shared.writeEnd(try startConsole(dir, owner: nil))
      defer { close(console) }
      pid = try ProcessReaper.shared.spawn(
        SpawnOptions(
          executable: executable, arguments: arguments, environment: environment,
          workingDirectory: dir, stdout: console, stderr: console, newSession: true))
    } catch {
      ConsoleRelays.shared.stop(dir)
      throw VMMError("firecracker did not start: \(error)")
    }
    ConsoleRelays.shared.watch(dir, pid: pid)
    // Collect its exit status while this manager runs, so it never lingers as a zombie.
    Task.detached { _ = await ProcessReaper.shared.waitForExit(pid) }
    let handle = VMHandle(sandboxId: spec.sandboxId, pid: pid, runtimeDirectory: dir)
    do {
      try "\(pid)\n".write(toFile: Self.pidFile(dir), atomically: true, encoding: .utf8)
    } catch {
      await terminate(handle)
      throw VMMError("cannot write \(Self.pidFile(dir)): \(error)")
    }
    let deadline = ContinuousClock.now + startTimeout
    while !FirecrackerClient.isListening(apiSocket) {
      if !ProcessReaper.shared.isRunning(pid) {
        throw VMMError(
          "firecracker exited before it listened on its API socket",
          consoleTail: consoleTail(runtimeDirectory: dir, lines: ConsoleLog.tailLines))
      }
      if ContinuousClock.now > deadline {
        await terminate(handle)
        throw VMMError(
          "firecracker did not listen on \(apiSocket) within \(startTimeout)",
          consoleTail: consoleTail(runtimeDirectory: dir, lines: ConsoleLog.tailLines))
      }
      try? await Task.sleep(for: .milliseconds(5))
    }
    return handle
  }

  func api(_ runtimeDirectory: String, timeout: Duration = .seconds(30)) -> FirecrackerClient {
    FirecrackerClient(socketPath: Self.apiSocket(workDirectory(runtimeDirectory)), timeout: timeout)
  }

  /// Runs API calls; Firecracker's refusal becomes a `VMMError` carrying its fault message.
  func call(_ body: () async throws -> Void) async throws {
    do {
      try await body()
    } catch let error as FirecrackerAPIError {
      throw VMMError(error.description)
    }
  }

  /// `call` on a running VM, with its console's last lines in the error.
  func call(
    _ handle: VMHandle, timeout: Duration = .seconds(30),
    _ body: (FirecrackerClient) async throws -> Void
  ) async throws {
    let client = api(handle.runtimeDirectory, timeout: timeout)
    do {
      try await call { try await body(client) }
    } catch let error as VMMError {
      throw VMMError(
        error.message, consoleTail: consoleTail(runtimeDirectory: handle.runtimeDirectory))
    }
  }

  // MARK: Processes

  /// Alive, and the Firecracker of this sandbox: started directly (its API socket is in the
  /// runtime directory) or by the jailer (which passes it `--id=<sandbox>`).
  public func isRunning(_ handle: VMHandle) -> Bool {
    guard HostProcesses.isAlive(handle.pid),
      let commandLine = HostProcesses.commandLine(of: handle.pid)
    else { return false }
    if let flag = commandLine.firstIndex(of: "--api-sock"), flag + 1 < commandLine.count,
      commandLine[flag + 1] == Self.apiSocket(handle.runtimeDirectory)
    {
      return true
    }
    // The executable (or the script an interpreter runs) is named for Firecracker, as the
    // jailer requires.
    // The jailer passes `--id <id>` (its docs say `--id=<id>`; both are accepted).
    guard commandLine.prefix(2).contains(where: { $0.hasSuffix("firecracker") }) else {
      return false
    }
    if commandLine.contains("--id=\(handle.sandboxId)") { return true }
    return zip(commandLine, commandLine.dropFirst()).contains {
      $0 == "--id" && $1 == handle.sandboxId
    }
  }

  /// (The manager stops the loopback forwarders into the VM when it releases its network.)
  public func kill(_ handle: VMHandle) async {
    defer { ConsoleRelays.shared.stop(handle.runtimeDirectory) }
    guard isRunning(handle) else { return }
    logger.info(
      "killing firecracker", metadata: ["sandbox": "\(handle.sandboxId)", "pid": "\(handle.pid)"])
    await Self.killGroupAndWait(handle.pid)
  }

  /// Kills a process this manager started (whatever its command line), e.g. a failed boot.
  func terminate(_ handle: VMHandle) async {
    if ProcessReaper.shared.isRunning(handle.pid) || isRunning(handle) {
      await Self.killGroupAndWait(handle.pid)
    }
    ConsoleRelays.shared.stop(handle.runtimeDirectory)
  }

  /// We start Firecracker as a session leader; its whole group goes (nothing of it lingers).
  static func killGroupAndWait(_ pid: Int32) async {
    if getpgid(pid) == pid { Glibc.kill(-pid, SIGKILL) }
    await HostProcesses.killAndWait(pid)
  }

  public func discover() -> [ObservedVM] {
    let prefix = sandboxesDirectory.hasSuffix("/") ? sandboxesDirectory : sandboxesDirectory + "/"
    var found = HostProcesses.discover(
      flag: "--api-sock", naming: Self.apiSocketName, under: sandboxesDirectory)
    // Jailed processes show no path of ours: their pid files tell.
    let directories = (try? FileManager.default.contentsOfDirectory(atPath: sandboxesDirectory))
    for id in directories ?? [] {
      guard let handle = adopt(sandboxId: id, runtimeDirectory: "\(prefix)\(id)"),
        !found.contains(where: { $0.pid == handle.pid })
      else { continue }
      found.append(ObservedVM(sandboxId: id, pid: handle.pid))
    }
    return found
  }

  // MARK: Lifecycle

  public func pause(_ handle: VMHandle) async throws {
    try await call(handle) { try await $0.patchVm(FirecrackerVMState(state: .paused)) }
  }

  public func resume(_ handle: VMHandle) async throws {
    try await call(handle) { try await $0.patchVm(FirecrackerVMState(state: .resumed)) }
  }

  /// Firecracker has no qcow2 and cannot change a drive under a running VM; the volume store
  /// must freeze disks without switching (LVM thin snapshots).
  public func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws {
    throw VMMError.unsupported("switching the disk of a running VM", name)
  }

  /// A full snapshot of the paused VM into `directory`: its memory file and microVM state.
  /// Jailed, Firecracker writes inside its chroot; the files are moved out after. Restores map
  /// the memory file privately (Firecracker's `File` backend), so it is read-only from now on.
  public func saveState(_ handle: VMHandle, into directory: String) async throws -> SavedVMState {
    let memory = "\(directory)/\(Self.memoryName)"
    let devices = "\(directory)/\(Self.devicesName)"
    let inJail = "\(workDirectory(handle.runtimeDirectory))/\(FirecrackerJail.memoryName)"
    let inJailDevices = inJail + FirecrackerJail.devicesSuffix
    if jail != nil {
      // Whatever an earlier, failed save left there.
      unlink(inJail)
      unlink(inJailDevices)
    }
    let request =
      jail == nil
      ? FirecrackerSnapshotCreate(snapshotType: .full, snapshotPath: devices, memFilePath: memory)
      : FirecrackerSnapshotCreate(
        snapshotType: .full,
        snapshotPath: "/\(FirecrackerJail.memoryName)\(FirecrackerJail.devicesSuffix)",
        memFilePath: "/\(FirecrackerJail.memoryName)")
    // Writing the memory takes seconds per GiB.
    try await call(handle, timeout: .seconds(1800)) {
      try await $0.createSnapshot(request, timeout: .seconds(1800))
    }
    if jail == nil {
      // Read-only, and readable by a jailed Firecracker should the jailer be turned on later.
      chmod(memory, 0o444)
      chmod(devices, 0o444)
    } else {
      try FirecrackerJail.takeOut(inJail, to: memory)
      try FirecrackerJail.takeOut(inJailDevices, to: devices)
    }
    return SavedVMState(format: .firecracker, memoryPath: memory, devicesPath: devices)
  }

  /// A new Firecracker process in `spec`'s runtime directory loads the snapshot (its memory is
  /// mapped privately from `state.memoryPath`, which must stay unchanged while the VM lives),
  /// on `spec`'s TAP. Left paused: the manager resumes it.
  public func restore(_ spec: VMSpec, from state: SavedVMState) async throws -> VMHandle {
    let tap = try Self.tapDevice(spec)
    try Self.checkDisk(spec.disk)
    guard state.format == .firecracker else {
      throw VMMError("a \(state.format.rawValue) snapshot cannot be restored by Firecracker")
    }
    // Jailed, the snapshot's files are linked into the chroot (read-only: the memory is
    // mapped privately, never written).
    let restored = FirecrackerJail.restoredMemoryName
    let handle = try await launch(
      spec,
      jailFiles: jail == nil
        ? []
        : [
          (state.memoryPath, restored),
          (state.devicesPath, restored + FirecrackerJail.devicesSuffix),
        ])
    do {
      let memory = jail == nil ? state.memoryPath : "/\(restored)"
      let devices =
        jail == nil ? state.devicesPath : "/\(restored)\(FirecrackerJail.devicesSuffix)"
      try await loadSnapshot(
        memory: memory, devices: devices, tap: tap, api: api(spec.runtimeDirectory))
    } catch {
      // Firecracker ends itself after a failed load; make sure.
      await terminate(handle)
      throw VMMError(
        "restore failed: \(error)",
        consoleTail: consoleTail(
          runtimeDirectory: spec.runtimeDirectory, lines: ConsoleLog.tailLines))
    }
    logger.info(
      "firecracker restored",
      metadata: [
        "sandbox": "\(spec.sandboxId)", "pid": "\(handle.pid)", "memory": "\(state.memoryPath)",
      ])
    return handle
  }

  /// `PUT /snapshot/load` on a fresh process. The snapshot's disk and vsock names are
  /// relative, so they resolve in this process's own directory; only the TAP is overridden.
  func loadSnapshot(
    memory: String, devices: String, tap: (device: String, mac: String), api: FirecrackerClient
  ) async throws {
    let request = FirecrackerSnapshotLoad(
      snapshotPath: devices, memBackend: .init(backendPath: memory, backendType: .file),
      resumeVm: false,
      networkOverrides: [.init(ifaceId: Self.interfaceId, hostDevName: tap.device)],
      vsockOverride: nil)
    try await call { try await api.loadSnapshot(request, timeout: .seconds(600)) }
  }
}
