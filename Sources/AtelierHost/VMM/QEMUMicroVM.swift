import Foundation
import Logging

/// Hardware acceleration for QEMU.
public enum Acceleration: String, Codable, Sendable {
  case kvm, tcg
}

/// The QEMU `microvm` backend: virtio-mmio devices, a direct kernel boot, QMP for control.
/// QEMU daemonizes, so its process is not the manager's child and survives a manager restart.
public struct QEMUMicroVM: VirtualMachineManager {
  public let name = "qemu"
  let binary: String
  let acceleration: Acceleration
  /// Root of all runtime directories; how `discover` recognises our processes.
  let sandboxesDirectory: String
  /// Guests get a `vhost-vsock-device` (the host kernel's vsock; needs `/dev/vhost-vsock`).
  public let vhostVsock: Bool
  let runner: any CommandRunning
  let logger: Logger

  public init(
    binary: String, acceleration: Acceleration, sandboxesDirectory: String,
    vhostVsock: Bool = false, runner: any CommandRunning,
    logger: Logger = Logger(label: "atelier.vmm.qemu")
  ) {
    self.binary = binary
    self.acceleration = acceleration
    self.sandboxesDirectory = sandboxesDirectory
    self.vhostVsock = vhostVsock
    self.runner = runner
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

  static func pidFile(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/qemu.pid" }
  static func qmpSocket(_ runtimeDirectory: String) -> String { "\(runtimeDirectory)/qmp.sock" }
  static func consoleLog(_ runtimeDirectory: String) -> String {
    "\(runtimeDirectory)/console.log"
  }
  static func processName(_ sandboxId: String) -> String { "atelier-\(sandboxId)" }

  /// The kernel command line: serial console, quiet boot, a panic that ends the VM, and under
  /// TCG the host's TSC rate (without it the guest hangs about half the time calibrating).
  func kernelCommandLine(_ spec: VMSpec) -> String {
    var arguments = [
      "console=ttyS0", "quiet", "loglevel=3", "panic=-1", "reboot=t", "i8042.noaux",
      "random.trust_cpu=on",
    ]
    if acceleration == .tcg, let khz = HostInfo.tscKHz() {
      arguments.append("tsc_early_khz=\(khz)")
    }
    return (arguments + spec.kernelArguments).joined(separator: " ")
  }

  public func arguments(for spec: VMSpec) -> [String] {
    let dir = spec.runtimeDirectory
    var arguments = [
      "-name", "\(Self.processName(spec.sandboxId)),process=\(Self.processName(spec.sandboxId))",
      "-machine", "microvm,x-option-roms=off,isa-serial=on,rtc=on",
      "-accel", acceleration == .kvm ? "kvm" : "tcg",
      "-m", "\(spec.memoryMb)", "-smp", "\(spec.vcpus)",
      "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
      "-chardev", "file,id=console,path=\(Self.consoleLog(dir))", "-serial", "chardev:console",
      "-kernel", spec.kernelPath, "-initrd", spec.initrdPath,
      "-append", kernelCommandLine(spec),
      "-drive",
      "id=root,file=\(spec.disk.path),format=\(spec.disk.format.rawValue),if=none,cache=writeback,discard=unmap",
      "-device", "virtio-blk-device,drive=root",
      "-device", "virtio-rng-device",
      "-qmp", "unix:\(Self.qmpSocket(dir)),server=on,wait=off",
      "-pidfile", Self.pidFile(dir), "-daemonize",
    ]
    if let keyDrive = spec.agentKeyDrive {
      arguments += [
        "-drive", "id=agentkey,file=\(keyDrive),format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=agentkey",
      ]
    }
    if acceleration == .tcg { arguments += ["-cpu", "max"] }
    switch spec.network.backend {
    case .userMode(let forwards):
      let net =
        "net=\(spec.network.gateway.split(separator: ".").prefix(3).joined(separator: ".")).0/\(spec.network.prefixLength)"
      // No IPv6: slirp would map fec0::2 onto the host's ::1, around the IPv4 firewall.
      var netdev =
        "user,id=net0,\(net),host=\(spec.network.gateway),dns=\(spec.network.dns),ipv6=off"
      if spec.network.restricted == true { netdev += ",restrict=on" }
      for forward in forwards {
        netdev +=
          ",hostfwd=tcp:\(forward.hostAddress):\(forward.hostPort)-\(spec.network.guestIPv4):\(forward.guestPort)"
      }
      arguments += ["-netdev", netdev, "-device", "virtio-net-device,netdev=net0"]
    case .tap(let device, let mac):
      arguments += [
        "-netdev", "tap,id=net0,ifname=\(device),script=no,downscript=no",
        "-device", "virtio-net-device,netdev=net0,mac=\(mac)",
      ]
    }
    if case .vsock(let cid, _) = spec.network.agent {
      arguments += ["-device", "vhost-vsock-device,id=vsock0,guest-cid=\(cid)"]
    }
    if case .privateInterface(let forward, let address, let prefix) = spec.network.agentChannel {
      // restrict=on: the guest cannot reach anything through this NIC; only the forward
      // reaches in.
      let net = address.split(separator: ".").prefix(3).joined(separator: ".")
      arguments += [
        "-netdev",
        "user,id=agent0,restrict=on,net=\(net).0/\(prefix),hostfwd=tcp:\(forward.hostAddress):\(forward.hostPort)-\(address):\(forward.guestPort)",
        "-device", "virtio-net-device,netdev=agent0,mac=52:54:00:a7:e1:01",
      ]
    }
    return arguments
  }

  public func boot(_ spec: VMSpec) async throws -> VMHandle {
    try await launch(spec, extraArguments: [])
  }

  /// Starts QEMU (daemonized) with `spec`; returns once its pid file is written.
  func launch(_ spec: VMSpec, extraArguments: [String]) async throws -> VMHandle {
    let dir = spec.runtimeDirectory
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    for stale in [Self.pidFile(dir), Self.qmpSocket(dir), Self.consoleLog(dir)] {
      try? FileManager.default.removeItem(atPath: stale)
    }
    do {
      try await runner.run(
        Command(binary, arguments(for: spec) + extraArguments, timeout: .seconds(60)))
    } catch let failure as CommandFailure {
      throw VMMError(
        "qemu did not start: \(failure.stderr.trimmingCharacters(in: .whitespacesAndNewlines))",
        consoleTail: consoleTail(runtimeDirectory: dir, lines: 25))
    }
    guard let pid = HostProcesses.pid(inFile: Self.pidFile(dir)) else {
      throw VMMError("qemu started but wrote no pid file")
    }
    logger.info("qemu started", metadata: ["sandbox": "\(spec.sandboxId)", "pid": "\(pid)"])
    return VMHandle(sandboxId: spec.sandboxId, pid: pid, runtimeDirectory: dir)
  }

  public func isRunning(_ handle: VMHandle) -> Bool {
    guard HostProcesses.isAlive(handle.pid),
      let commandLine = HostProcesses.commandLine(of: handle.pid)
    else { return false }
    return commandLine.contains(Self.pidFile(handle.runtimeDirectory))
  }

  public func kill(_ handle: VMHandle) async {
    guard isRunning(handle) else { return }
    logger.info(
      "killing qemu", metadata: ["sandbox": "\(handle.sandboxId)", "pid": "\(handle.pid)"])
    await HostProcesses.killAndWait(handle.pid)
  }

  public func discover() -> [ObservedVM] {
    HostProcesses.discover(flag: "-pidfile", naming: "qemu.pid", under: sandboxesDirectory)
  }

  func qmp(_ handle: VMHandle) -> QMPClient {
    QMPClient(socketPath: Self.qmpSocket(handle.runtimeDirectory))
  }

  public func pause(_ handle: VMHandle) async throws {
    try await qmp(handle).execute("stop")
  }

  public func resume(_ handle: VMHandle) async throws {
    try await qmp(handle).execute("cont")
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

  public func saveState(_ handle: VMHandle, to path: String) async throws {
    guard !path.contains("'") else { throw VMMError("unsupported state path \(path)") }
    let client = qmp(handle)
    try await client.execute("migrate", arguments: ["uri": "exec:cat > '\(path)'"])
    try await client.waitForMigration()
  }

  public func restore(_ spec: VMSpec, statePath: String) async throws -> VMHandle {
    guard !statePath.contains("'") else { throw VMMError("unsupported state path \(statePath)") }
    let handle = try await launch(spec, extraArguments: ["-incoming", "defer"])
    do {
      let client = qmp(handle)
      try await client.execute("migrate-incoming", arguments: ["uri": "exec:cat '\(statePath)'"])
      try await client.waitForMigration()
    } catch {
      await kill(handle)
      throw VMMError(
        "restore failed: \(error)",
        consoleTail: consoleTail(runtimeDirectory: spec.runtimeDirectory))
    }
    return handle
  }

  public func consoleTail(runtimeDirectory: String, lines: Int) -> String {
    HostProcesses.tail(of: Self.consoleLog(runtimeDirectory), lines: lines)
  }

  /// Handle for a runtime directory whose pid file names a live VM of this sandbox.
  public func adopt(sandboxId: String, runtimeDirectory: String) -> VMHandle? {
    guard let pid = HostProcesses.pid(inFile: Self.pidFile(runtimeDirectory)) else { return nil }
    let handle = VMHandle(sandboxId: sandboxId, pid: pid, runtimeDirectory: runtimeDirectory)
    return isRunning(handle) ? handle : nil
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
