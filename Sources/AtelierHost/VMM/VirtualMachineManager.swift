import AtelierAgentAPI
import Foundation

/// How a guest disk is handed to the VMM.
public struct DiskAttachment: Codable, Sendable, Equatable {
  public enum Format: String, Codable, Sendable { case raw, qcow2 }
  public var path: String
  public var format: Format
  public init(path: String, format: Format) {
    self.path = path
    self.format = format
  }
}

/// Where the manager reaches a guest's agent.
public enum AgentEndpoint: Codable, Sendable, Equatable {
  /// A loopback TCP port forwarded into the guest by the VMM.
  case tcp(host: String, port: Int)
  /// Firecracker-style hybrid vsock: a Unix socket on the host, `CONNECT <port>\n` first.
  case hybridVsock(path: String, port: Int)
  /// AF_VSOCK to the guest's context id (QEMU with vhost-vsock). CID 0 (never a guest's)
  /// stands for "not assigned yet": the VMM assigns one when the network is attached.
  case vsock(cid: UInt32, port: Int)
}

/// The guest's network, as the VMM must wire it.
public struct NetworkAttachment: Codable, Sendable, Equatable {
  public enum Backend: Codable, Sendable, Equatable {
    /// QEMU user-mode networking (slirp) with host port forwards to guest ports.
    case userMode(forwards: [PortForward])
    /// A TAP device on a host bridge.
    case tap(device: String, mac: String)
  }
  public struct PortForward: Codable, Sendable, Equatable {
    public var hostAddress: String
    public var hostPort: Int
    public var guestPort: Int
    public init(hostAddress: String, hostPort: Int, guestPort: Int) {
      self.hostAddress = hostAddress
      self.hostPort = hostPort
      self.guestPort = guestPort
    }
  }
  /// How the agent is reached, apart from the guest's own network.
  public enum AgentChannel: Codable, Sendable, Equatable {
    /// On eth0 itself (user-mode networking: nothing but the port forward reaches it).
    case sharedInterface
    /// A second, isolated user-mode NIC (eth1) with only the agent's port forwarded; the agent
    /// listens on that address alone, never on the shared network.
    case privateInterface(forward: PortForward, guestAddress: String, prefixLength: Int)
    /// AF_VSOCK (the agent listens on loopback and relays vsock connections to it).
    case vsock(port: Int)
  }

  public var backend: Backend
  public var guestIPv4: String
  public var prefixLength: Int
  public var gateway: String
  public var dns: String
  public var agent: AgentEndpoint
  public var agentChannel: AgentChannel
  /// The guest's own NIC reaches nothing (user mode: slirp's `restrict=on`); what it may use
  /// on the host comes through the agent. Nil is false.
  public var restricted: Bool?

  public init(
    backend: Backend, guestIPv4: String, prefixLength: Int, gateway: String, dns: String,
    agent: AgentEndpoint, agentChannel: AgentChannel = .sharedInterface, restricted: Bool? = nil
  ) {
    self.backend = backend
    self.guestIPv4 = guestIPv4
    self.prefixLength = prefixLength
    self.gateway = gateway
    self.dns = dns
    self.agent = agent
    self.agentChannel = agentChannel
    self.restricted = restricted
  }

  /// The guest's MAC on the shared network, when it has one of its own.
  public var mac: String? {
    if case .tap(_, let mac) = backend { return mac }
    return nil
  }

  /// What the guest is told at boot (kernel command line) about its network and agent.
  public func bootParameters(sandboxId: String, hostname: String) -> GuestBootParameters {
    var parameters = GuestBootParameters(
      sandboxId: sandboxId, hostname: hostname, ipv4: "\(guestIPv4)/\(prefixLength)",
      gateway: gateway, dns: dns)
    switch agentChannel {
    case .sharedInterface: break
    case .privateInterface(_, let address, let prefix):
      parameters.agentInterface = "eth1:\(address)/\(prefix)"
      parameters.listen = address
    case .vsock(let port):
      parameters.listen = "127.0.0.1"
      parameters.vsockPort = port
    }
    return parameters
  }
}

/// Everything needed to start one VM.
public struct VMSpec: Sendable {
  public var sandboxId: String
  /// Pid file, control socket and console log live here.
  public var runtimeDirectory: String
  public var kernelPath: String
  public var initrdPath: String
  /// Guest parameters (`atelier.*`); the backend adds its own console and timing options.
  public var kernelArguments: [String]
  public var disk: DiskAttachment
  public var vcpus: Int
  public var memoryMb: Int
  public var network: NetworkAttachment
  /// The agent's key drive (`AgentKeyDrive`, a 4 KiB raw file), attached read-only after the
  /// root disk; nil for none.
  public var agentKeyDrive: String?

  public init(
    sandboxId: String, runtimeDirectory: String, kernelPath: String, initrdPath: String,
    kernelArguments: [String], disk: DiskAttachment, vcpus: Int, memoryMb: Int,
    network: NetworkAttachment, agentKeyDrive: String? = nil
  ) {
    self.sandboxId = sandboxId
    self.runtimeDirectory = runtimeDirectory
    self.kernelPath = kernelPath
    self.initrdPath = initrdPath
    self.kernelArguments = kernelArguments
    self.disk = disk
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.network = network
    self.agentKeyDrive = agentKeyDrive
  }
}

/// A VM process the manager started or adopted. Persisted, so a restarted manager finds it.
public struct VMHandle: Codable, Sendable, Equatable {
  public var sandboxId: String
  public var pid: Int32
  public var runtimeDirectory: String
  public init(sandboxId: String, pid: Int32, runtimeDirectory: String) {
    self.sandboxId = sandboxId
    self.pid = pid
    self.runtimeDirectory = runtimeDirectory
  }
}

/// A VM process found on the host, whoever started it.
public struct ObservedVM: Sendable, Equatable {
  public var sandboxId: String
  public var pid: Int32
  public init(sandboxId: String, pid: Int32) {
    self.sandboxId = sandboxId
    self.pid = pid
  }
}

public struct VMMError: Error, CustomStringConvertible, Sendable {
  public var message: String
  /// The last lines the guest printed, when there are any.
  public var consoleTail: String
  public init(_ message: String, consoleTail: String = "") {
    self.message = message
    self.consoleTail = consoleTail
  }
  public var description: String { message }

  static func unsupported(_ what: String, _ backend: String) -> VMMError {
    VMMError("\(what) is not supported by the \(backend) backend")
  }
}

/// A virtual machine monitor backend (QEMU microvm, Firecracker). VM processes outlive the
/// manager: everything needed to find one again is in its runtime directory.
public protocol VirtualMachineManager: Sendable {
  var name: String { get }
  /// Boots the uncompressed `vmlinux` (Firecracker) rather than the compressed `vmlinuz`.
  var bootsUncompressedKernel: Bool { get }
  /// Starts the VM process; returns once it runs (the agent may not answer yet).
  func boot(_ spec: VMSpec) async throws -> VMHandle
  /// Whether the process is alive and is the VM of this sandbox (not a reused pid).
  func isRunning(_ handle: VMHandle) -> Bool
  /// Stops the process at once and waits until it is gone.
  func kill(_ handle: VMHandle) async
  /// VM processes of ours on this host (for the reconciler).
  func discover() -> [ObservedVM]
  /// The last lines of the guest console.
  func consoleTail(runtimeDirectory: String, lines: Int) -> String

  // Lifecycle beyond boot and kill; backends that cannot throw `VMMError.unsupported`.

  /// Freezes the vCPUs (memory stays allocated).
  func pause(_ handle: VMHandle) async throws
  func resume(_ handle: VMHandle) async throws
  /// Makes `newTop` (a qcow2 overlay whose backing is the current disk, frozen from now on)
  /// the running VM's disk. The VM should be paused.
  func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws
  /// Writes the paused VM's memory and device state to `path`; the VM stays paused.
  func saveState(_ handle: VMHandle, to path: String) async throws
  /// Starts a VM from a saved state instead of booting it; it is left paused.
  func restore(_ spec: VMSpec, statePath: String) async throws -> VMHandle

  /// Where guest vsock `port` of a VM about to start in `runtimeDirectory` will be reached
  /// (each VM, and each restore, gets its own). Throws when this backend has no vsock here.
  func vsockEndpoint(port: Int, runtimeDirectory: String) throws -> AgentEndpoint
}

extension VirtualMachineManager {
  public var bootsUncompressedKernel: Bool { false }
  public func pause(_ handle: VMHandle) async throws { throw VMMError.unsupported("pause", name) }
  public func resume(_ handle: VMHandle) async throws { throw VMMError.unsupported("resume", name) }
  public func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws {
    throw VMMError.unsupported("disk snapshots", name)
  }
  public func saveState(_ handle: VMHandle, to path: String) async throws {
    throw VMMError.unsupported("memory snapshots", name)
  }
  public func restore(_ spec: VMSpec, statePath: String) async throws -> VMHandle {
    throw VMMError.unsupported("restoring snapshots", name)
  }
  public func vsockEndpoint(port: Int, runtimeDirectory: String) throws -> AgentEndpoint {
    throw VMMError.unsupported("vsock", name)
  }

  public func consoleTail(runtimeDirectory: String) -> String {
    consoleTail(runtimeDirectory: runtimeDirectory, lines: 25)
  }
}

/// Helpers on /proc shared by VMM backends.
enum HostProcesses {
  static func commandLine(of pid: Int32) -> [String]? {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty
    else { return nil }
    return data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
  }

  /// Alive and not a zombie.
  static func isAlive(_ pid: Int32) -> Bool {
    guard pid > 0, Foundation.kill(pid, 0) == 0 || errno == EPERM else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
      let close = stat.lastIndex(of: ")")
    else { return false }
    let state = stat[stat.index(close, offsetBy: 2)...].prefix(1)
    return state != "Z" && state != "X"
  }

  /// Live processes whose command line gives `flag` a file `<sandboxes>/<id>/<file>`: the VMs
  /// of the sandboxes under `sandboxesDirectory`, whoever started them.
  static func discover(flag: String, naming file: String, under sandboxesDirectory: String)
    -> [ObservedVM]
  {
    let prefix = sandboxesDirectory.hasSuffix("/") ? sandboxesDirectory : sandboxesDirectory + "/"
    return allPids().compactMap { pid in
      guard let commandLine = commandLine(of: pid),
        let index = commandLine.firstIndex(of: flag), index + 1 < commandLine.count
      else { return nil }
      let path = commandLine[index + 1]
      guard path.hasPrefix(prefix), path.hasSuffix("/\(file)"), isAlive(pid) else { return nil }
      let id = path.dropFirst(prefix.count).split(separator: "/").first.map(String.init) ?? ""
      return ObservedVM(sandboxId: id, pid: pid)
    }
  }

  /// The pid a pid file holds.
  static func pid(inFile path: String) -> Int32? {
    (try? String(contentsOfFile: path, encoding: .utf8))
      .flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
  }

  static func allPids() -> [Int32] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { Int32($0) }
  }

  /// SIGKILL and wait (up to `timeout`) for the process to disappear.
  static func killAndWait(_ pid: Int32, timeout: Duration = .seconds(10)) async {
    guard pid > 0 else { return }
    Foundation.kill(pid, SIGKILL)
    let deadline = ContinuousClock.now + timeout
    while isAlive(pid) && ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(20))
    }
  }

  static func tail(of path: String, lines: Int, maxBytes: Int = 64 << 10) -> String {
    guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
    defer { try? handle.close() }
    let size = (try? handle.seekToEnd()) ?? 0
    try? handle.seek(toOffset: size > UInt64(maxBytes) ? size - UInt64(maxBytes) : 0)
    let data = (try? handle.readToEnd()) ?? Data()
    let text = String(decoding: data, as: UTF8.self)
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
      .joined(separator: "\n")
  }
}
