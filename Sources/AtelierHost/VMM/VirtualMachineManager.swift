import Foundation

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
  /// A live VM of this sandbox found from its runtime directory (its pid file), or nil.
  func adopt(sandboxId: String, runtimeDirectory: String) -> VMHandle?
  /// Takes over a live VM after a manager restart: what the manager runs for it (the console
  /// relay) starts again.
  func reattach(_ handle: VMHandle) async
  /// The last lines of the guest console.
  func consoleTail(runtimeDirectory: String, lines: Int) -> String
  /// Removes the RAM a stopped VM left in its runtime directory (a next boot starts afresh).
  func removeGuestMemory(runtimeDirectory: String)

  // Lifecycle beyond boot and kill; backends that cannot throw `VMMError.unsupported`.

  /// Freezes the vCPUs (memory stays allocated).
  func pause(_ handle: VMHandle) async throws
  func resume(_ handle: VMHandle) async throws
  /// Whether the vCPUs run (false when paused, or left stopped by an interrupted save).
  func isExecuting(_ handle: VMHandle) async throws -> Bool
  /// Makes `newTop` (a qcow2 overlay whose backing is the current disk, frozen from now on)
  /// the running VM's disk. The VM should be paused.
  func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws
  /// Work of a snapshot that can happen before the VM pauses (copying what will not change),
  /// into `directory`, the snapshot's folder.
  func prepareSave(_ handle: VMHandle, into directory: String) async throws
  /// Writes the paused VM's memory and device state into `directory`; the VM stays paused.
  func saveState(_ handle: VMHandle, into directory: String) async throws -> SavedVMState
  /// Starts a VM from a saved state instead of booting it; it is left paused. Its memory maps
  /// `state.memoryPath` privately: the file must stay unchanged while the VM lives.
  func restore(_ spec: VMSpec, from state: SavedVMState) async throws -> VMHandle

  /// Where guest vsock `port` of a VM about to start in `runtimeDirectory` will be reached
  /// (each VM, and each restore, gets its own). Throws when this backend has no vsock here.
  func vsockEndpoint(port: Int, runtimeDirectory: String) throws -> AgentEndpoint
}

extension VirtualMachineManager {
  public var bootsUncompressedKernel: Bool { false }
  public func reattach(_ handle: VMHandle) async {}
  public func removeGuestMemory(runtimeDirectory: String) {}
  public func pause(_ handle: VMHandle) async throws { throw VMMError.unsupported("pause", name) }
  public func resume(_ handle: VMHandle) async throws { throw VMMError.unsupported("resume", name) }
  public func isExecuting(_ handle: VMHandle) async throws -> Bool { true }
  public func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws {
    throw VMMError.unsupported("disk snapshots", name)
  }
  public func prepareSave(_ handle: VMHandle, into directory: String) async throws {}
  public func saveState(_ handle: VMHandle, into directory: String) async throws -> SavedVMState {
    throw VMMError.unsupported("memory snapshots", name)
  }
  public func restore(_ spec: VMSpec, from state: SavedVMState) async throws -> VMHandle {
    throw VMMError.unsupported("restoring snapshots", name)
  }
  public func vsockEndpoint(port: Int, runtimeDirectory: String) throws -> AgentEndpoint {
    throw VMMError.unsupported("vsock", name)
  }

  public func consoleTail(runtimeDirectory: String) -> String {
    consoleTail(runtimeDirectory: runtimeDirectory, lines: ConsoleLog.tailLines)
  }
}
