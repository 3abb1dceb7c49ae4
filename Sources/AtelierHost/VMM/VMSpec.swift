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

/// How a VM's RAM is backed (QEMU; Firecracker keeps its RAM anonymous and maps snapshots
/// itself).
public enum GuestMemory: Codable, Sendable, Equatable {
  /// A file of the VM's own in its runtime directory, mapped shared (`share=on`): the file is
  /// the RAM, so a snapshot is a copy of it.
  case shared(path: String)
  /// A private copy-on-write mapping (`share=off`) of `base`, a snapshot's memory file that
  /// nothing writes. What the guest wrote since lives in the process's own pages.
  case privateMapping(base: String)
}

/// A VM process the manager started or adopted. Persisted, so a restarted manager finds it.
public struct VMHandle: Codable, Sendable, Equatable {
  public var sandboxId: String
  public var pid: Int32
  public var runtimeDirectory: String
  /// nil for VMMs (and VMs from before memory files) whose RAM is anonymous.
  public var memory: GuestMemory?
  public init(
    sandboxId: String, pid: Int32, runtimeDirectory: String, memory: GuestMemory? = nil
  ) {
    self.sandboxId = sandboxId
    self.pid = pid
    self.runtimeDirectory = runtimeDirectory
    self.memory = memory
  }
}

/// A paused VM's state as `saveState` wrote it: files the manager owns, which nothing writes
/// afterwards (restores map the memory file privately).
public struct SavedVMState: Codable, Sendable, Equatable {
  public enum Format: String, Codable, Sendable {
    /// QEMU: `memory` is the guest RAM as a file, `devices` a migration stream of the devices
    /// only (`x-ignore-shared` left the shared RAM out), with QEMU's configuration section.
    case qemuMemoryFile
    /// QEMU: the same, with the device state from `xen-save-devices-state` (no configuration
    /// section): how a VM whose RAM is a private mapping is saved.
    case qemuMemoryFileDevices
    /// Firecracker: a full snapshot, `memory` the memory file, `devices` the microVM state.
    case firecracker
  }
  public var format: Format
  public var memoryPath: String
  public var devicesPath: String
  public init(format: Format, memoryPath: String, devicesPath: String) {
    self.format = format
    self.memoryPath = memoryPath
    self.devicesPath = devicesPath
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
