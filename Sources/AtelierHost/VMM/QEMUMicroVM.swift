import AtelierProcess
import CAtelierSys
import Foundation
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// Hardware acceleration for QEMU.
public enum Acceleration: String, Codable, Sendable {
  case kvm, tcg
}

/// The QEMU `microvm` backend: virtio-mmio devices, a direct kernel boot, QMP for control.
///
/// Least privilege: when the manager is root, QEMU is spawned directly as `user` (the spawn
/// sets the groups, gid and uid before exec; QEMU's own `-runas` dies with SIGSYS under
/// `elevateprivileges=deny` in 7.2), under its seccomp filter (`-sandbox on,…,spawn=deny`), in
/// a session of its own and without `-daemonize` (which `spawn=deny` breaks). It outlives the
/// manager all the same: a restarted manager finds it by its pid file. What it may not open
/// itself (a TAP device, vhost-vsock) it gets as an inherited descriptor.
public struct QEMUMicroVM: VMProcessBackend {
  public let name = "qemu"
  let binary: String
  let acceleration: Acceleration
  /// Root of all runtime directories; how `discover` recognises our processes.
  let sandboxesDirectory: String
  /// Guests get a `vhost-vsock-device` (the host kernel's vsock; needs `/dev/vhost-vsock`).
  public let vhostVsock: Bool
  /// Who QEMU runs as; nil runs it as the manager's own user (a manager that is not root).
  let user: VMUser?
  public let consoleCapBytes: Int
  /// TCG's translation cache per VM, in MiB (QEMU's default is far larger than sandboxes
  /// need; see `QEMUArguments`).
  let translationCacheMb: Int
  let environment: [String: String]
  let startTimeout: Duration
  let logger: Logger

  public init(
    binary: String, acceleration: Acceleration, sandboxesDirectory: String,
    vhostVsock: Bool = false, user: VMUser? = nil,
    consoleCapBytes: Int = ConsoleLog.defaultCapBytes,
    translationCacheMb: Int = QEMUMicroVM.defaultTranslationCacheMb,
    environment: [String: String] = ProcessInfo.processInfo.environment,
    startTimeout: Duration = .seconds(60),
    logger: Logger = Logger(label: "atelier.vmm.qemu")
  ) {
    self.binary = binary
    self.acceleration = acceleration
    self.sandboxesDirectory = sandboxesDirectory
    self.vhostVsock = vhostVsock
    self.user = user
    self.consoleCapBytes = consoleCapBytes
    self.translationCacheMb = translationCacheMb
    self.environment = environment
    self.startTimeout = startTimeout
    self.logger = logger
  }

  /// Whether this host can give QEMU guests a vsock: `/dev/vhost-vsock` exists and we may
  /// open it.
  public static func vhostVsockUsable(device: String = "/dev/vhost-vsock") -> Bool {
    access(device, R_OK | W_OK) == 0
  }

  /// A context id for a new guest. CIDs are host-wide (any VMM, any user), so a random one
  /// from a large range, avoiding those of our running VMs; QEMU refuses to start on a clash.
  public func vsockEndpoint(port: Int, runtimeDirectory: String) throws -> AgentEndpoint {
    guard vhostVsock else {
      throw VMMError("vsock needs /dev/vhost-vsock, which this host does not have")
    }
    let taken = Set(
      discover().compactMap { HostProcesses.commandLine(of: $0.pid) }
        .compactMap(Self.guestCID(in:)))
    var cid: UInt32
    repeat { cid = UInt32.random(in: 3...0x7fff_ffff) } while taken.contains(cid)
    return .vsock(cid: cid, port: port)
  }

  /// The `guest-cid=` of a QEMU command line, if it has a vsock device.
  static func guestCID(in commandLine: [String]) -> UInt32? {
    for argument in commandLine where argument.hasPrefix("vhost-vsock-device,") {
      for option in argument.split(separator: ",") where option.hasPrefix("guest-cid=") {
        return UInt32(option.dropFirst("guest-cid=".count))
      }
    }
    return nil
  }

  public func pidFile(_ runtimeDirectory: String) -> String { Self.pidFile(runtimeDirectory) }
  static func pidFile(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/qemu.pid" }
  static func qmpSocket(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/qmp.sock" }
  /// The guest RAM of a booted VM (a file of its own, mapped shared).
  static func memoryFile(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/memory" }
  /// The link to the snapshot memory a restored VM maps privately.
  static func baseMemoryLink(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/memory.base"
  }
  static func processName(_ sandboxId: String) -> String { "atelier-\(sandboxId)" }

  // MARK: Processes

  public func boot(_ spec: VMSpec) async throws -> VMHandle {
    try prepareRuntimeDirectory(spec.runtimeDirectory)
    return try await launch(
      spec, memory: .shared(path: Self.memoryFile(spec.runtimeDirectory)), incoming: nil)
  }

  /// The runtime directory, the VM user's alone, without what an earlier VM left there.
  func prepareRuntimeDirectory(_ dir: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try user?.own(dir, mode: 0o700)
    for stale in [
      Self.pidFile(dir), Self.qmpSocket(dir), Self.memoryFile(dir), Self.baseMemoryLink(dir),
    ] {
      unlink(stale)
    }
  }

  /// Starts QEMU for `spec` and returns once it answers on QMP. Throws (leaving no process)
  /// when it exits first or does not answer in time.
  func launch(_ spec: VMSpec, memory: GuestMemory, incoming: SavedVMState.Format?) async throws
    -> VMHandle
  {
    let dir = spec.runtimeDirectory
    let console = try startConsole(dir, owner: user)
    var descriptors: [Int32] = []
    defer { descriptors.forEach { close($0) } }
    let pid: Int32
    do {
      descriptors = try openDevices(spec)
      let output = try ConsoleRelays.shared.writeEnd(console)
      defer { close(output) }
      try grantDisk(spec.disk)
      // The key drive is the manager's file (0600); the VM user alone may read it.
      if let keyDrive = spec.agentKeyDrive { try user?.own(keyDrive, mode: 0o600) }
      let arguments = arguments(for: spec, memory: memory, incoming: incoming)
      logger.debug(
        "run \(([binary] + arguments).joined(separator: " "))",
        metadata: ["sandbox": "\(spec.sandboxId)"])
      pid = try ProcessReaper.shared.spawn(
        SpawnOptions(
          executable: binary, arguments: arguments,
          environment: environment, credentials: try credentials(), stdout: output,
          stderr: output, newSession: true, inheritedDescriptors: descriptors))
    } catch {
      ConsoleRelays.shared.stop(dir)
      throw VMMError("qemu did not start: \(error)")
    }
    ConsoleRelays.shared.watch(dir, pid: pid)
    // Collect its exit status while this manager runs, so it never lingers as a zombie.
    Task.detached { _ = await ProcessReaper.shared.waitForExit(pid) }
    let handle = VMHandle(
      sandboxId: spec.sandboxId, pid: pid, runtimeDirectory: dir, memory: memory)
    try await waitForQMP(handle)
    logger.info("qemu started", metadata: ["sandbox": "\(spec.sandboxId)", "pid": "\(pid)"])
    return handle
  }

  func waitForQMP(_ handle: VMHandle) async throws {
    let deadline = ContinuousClock.now + startTimeout
    while true {
      if (try? await qmp(handle, timeout: .seconds(5)).execute("query-status")) != nil { return }
      if !ProcessReaper.shared.isRunning(handle.pid) || !HostProcesses.isAlive(handle.pid) {
        let tail = consoleTail(
          runtimeDirectory: handle.runtimeDirectory, lines: ConsoleLog.tailLines)
        ConsoleRelays.shared.stop(handle.runtimeDirectory)
        throw VMMError("qemu did not start: \(Self.lastLine(of: tail))", consoleTail: tail)
      }
      if ContinuousClock.now > deadline {
        await terminate(handle)
        throw VMMError(
          "qemu did not answer on QMP within \(startTimeout)",
          consoleTail: consoleTail(
            runtimeDirectory: handle.runtimeDirectory, lines: ConsoleLog.tailLines))
      }
      try? await Task.sleep(for: .milliseconds(5))
    }
  }

  /// QEMU's own complaint is the last thing it wrote before exiting.
  static func lastLine(of text: String) -> String {
    text.split(separator: "\n").last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
      .map(String.init) ?? "it exited"
  }

  /// The user, group and device groups QEMU runs with; nil keeps the manager's.
  func credentials() throws -> ProcessCredentials? {
    guard let user else { return nil }
    var groups: [UInt32] = []
    if acceleration == .kvm {
      guard let kvm = VMUser.group(granting: "/dev/kvm") else {
        throw VMMError(
          "QEMU runs as \(user.name), who cannot open /dev/kvm: give it a group that may "
            + "(chgrp kvm /dev/kvm; chmod 660 /dev/kvm), or set ATELIER_ACCEL=tcg")
      }
      groups.append(kvm)
    }
    return user.credentials(extraGroups: groups)
  }

  /// Descriptors QEMU gets instead of opening devices itself, in the order `arguments` numbers
  /// them from 3: the TAP device, then vhost-vsock.
  func openDevices(_ spec: VMSpec) throws -> [Int32] {
    var descriptors: [Int32] = []
    do {
      if case .tap(let device, _) = spec.network.backend {
        let fd = atelier_tap_open(device)
        guard fd >= 0 else {
          throw VMMError(
            "cannot open the TAP device \(device): \(String(cString: strerror(errno)))")
        }
        descriptors.append(fd)
      }
      if case .vsock = spec.network.agent {
        let fd = open("/dev/vhost-vsock", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
          throw VMMError("cannot open /dev/vhost-vsock: \(String(cString: strerror(errno)))")
        }
        descriptors.append(fd)
      }
    } catch {
      descriptors.forEach { close($0) }
      throw error
    }
    return descriptors
  }

  /// A block device disk (LVM) gets the VM user as its node's owner; files are the volume
  /// store's to hand over.
  func grantDisk(_ disk: DiskAttachment) throws {
    guard let user else { return }
    let resolved = (disk.path as NSString).resolvingSymlinksInPath
    var info = stat()
    guard stat(resolved, &info) == 0, (info.st_mode & S_IFMT) == S_IFBLK else { return }
    try user.own(resolved, mode: 0o600)
  }

  public func removeGuestMemory(runtimeDirectory: String) {
    unlink(Self.memoryFile(runtimeDirectory))
    unlink(Self.baseMemoryLink(runtimeDirectory))
  }

  public func isRunning(_ handle: VMHandle) -> Bool {
    guard HostProcesses.isAlive(handle.pid),
      let commandLine = HostProcesses.commandLine(of: handle.pid)
    else { return false }
    return commandLine.contains(Self.pidFile(handle.runtimeDirectory))
  }

  public func kill(_ handle: VMHandle) async {
    defer { ConsoleRelays.shared.stop(handle.runtimeDirectory) }
    guard isRunning(handle) else { return }
    logger.info(
      "killing qemu", metadata: ["sandbox": "\(handle.sandboxId)", "pid": "\(handle.pid)"])
    await HostProcesses.killAndWait(handle.pid)
  }

  /// Kills a process this manager started (whatever its command line), e.g. a failed start.
  func terminate(_ handle: VMHandle) async {
    await HostProcesses.killAndWait(handle.pid)
    ConsoleRelays.shared.stop(handle.runtimeDirectory)
  }

  public func discover() -> [ObservedVM] {
    HostProcesses.discover(flag: "-pidfile", naming: "qemu.pid", under: sandboxesDirectory)
  }

  func qmp(_ handle: VMHandle, timeout: Duration = .seconds(30)) -> QMPClient {
    QMPClient(socketPath: Self.qmpSocket(handle.runtimeDirectory), timeout: timeout)
  }

  // MARK: Lifecycle

  public func pause(_ handle: VMHandle) async throws {
    try await qmp(handle).execute("stop")
  }

  public func resume(_ handle: VMHandle) async throws {
    try await qmp(handle).execute("cont")
  }

  public func isExecuting(_ handle: VMHandle) async throws -> Bool {
    try await qmp(handle).status() == "running"
  }

  public func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws {
    // "existing": QEMU opens our overlay and puts the current disk under it as its backing.
    try await qmp(handle).execute(
      "blockdev-snapshot-sync",
      arguments: [
        "device": "root", "snapshot-file": newTop.path, "format": newTop.format.rawValue,
        "mode": "existing",
      ])
  }
}

/// Facts about this host.
public enum HostInfo {
  /// The TSC rate in kHz, from the kernel's "cpu MHz" (what it detected at boot).
  public static func tscKHz() -> Int? {
    guard let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else {
      return nil
    }
    for line in cpuinfo.split(separator: "\n") where line.hasPrefix("cpu MHz") {
      guard let value = line.split(separator: ":").last,
        let mhz = Double(value.trimmingCharacters(in: .whitespaces))
      else { continue }
      return Int((mhz * 1000).rounded())
    }
    return nil
  }
}
