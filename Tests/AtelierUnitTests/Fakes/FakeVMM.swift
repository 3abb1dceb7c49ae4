import AtelierAgentAPI
import Foundation
import Synchronization

@testable import AtelierHost

/// A VMM whose "VMs" are fake agents on loopback ports: boot, kill, pause, snapshots and
/// restores keep their state in memory (and write the files a real VMM would), each able to
/// fail at a named step.
final class FakeVMM: VirtualMachineManager, Sendable {
  let name = "fake"
  let faults: FaultPlan
  private struct VM {
    var handle: VMHandle
    var agent: FakeAgent?
    var paused = false
  }
  private let vms = Mutex<[Int32: VM]>([:])
  private let nextPid = Mutex<Int32>(100_000)

  init(faults: FaultPlan) { self.faults = faults }

  var running: [VMHandle] { vms.withLock { $0.values.map(\.handle) } }

  func boot(_ spec: VMSpec) async throws -> VMHandle {
    try await faults.pass(.boot)
    return try await start(spec, answeringAs: spec.sandboxId)
  }

  /// Starts a "VM" whose agent answers as `identity` (a restore answers as its snapshot's
  /// sandbox until it is told who it is now).
  func start(_ spec: VMSpec, answeringAs identity: String) async throws -> VMHandle {
    try FileManager.default.createDirectory(
      atPath: spec.runtimeDirectory, withIntermediateDirectories: true)
    let pid = nextPid.withLock { pid -> Int32 in
      pid += 1
      return pid
    }
    let handle = VMHandle(
      sandboxId: spec.sandboxId, pid: pid, runtimeDirectory: spec.runtimeDirectory)
    var agent: FakeAgent?
    if (try? faults.check(.agentReady)) != nil, case .tcp(_, let port) = spec.network.agent {
      let started = FakeAgent(port: port, sandboxId: identity) { [weak self] in
        Task { await self?.kill(handle) }
      }
      try await started.start()
      agent = started
    }
    vms.withLock { $0[pid] = VM(handle: handle, agent: agent) }
    return handle
  }

  func isRunning(_ handle: VMHandle) -> Bool {
    vms.withLock { $0[handle.pid]?.handle == handle }
  }

  func kill(_ handle: VMHandle) async {
    let vm = vms.withLock { $0.removeValue(forKey: handle.pid) }
    await vm?.agent?.stop()
  }

  func discover() -> [ObservedVM] {
    vms.withLock {
      $0.values.map { ObservedVM(sandboxId: $0.handle.sandboxId, pid: $0.handle.pid) }
    }
  }

  func consoleTail(runtimeDirectory: String, lines: Int) -> String { "fake console" }

  func pause(_ handle: VMHandle) async throws {
    try faults.check(.pause)
    vms.withLock { $0[handle.pid]?.paused = true }
  }

  func resume(_ handle: VMHandle) async throws {
    try faults.check(.resume)
    vms.withLock { $0[handle.pid]?.paused = false }
  }

  func isPaused(_ handle: VMHandle) -> Bool { vms.withLock { $0[handle.pid]?.paused == true } }

  func switchDisk(_ handle: VMHandle, to newTop: DiskAttachment) async throws {
    try faults.check(.switchDisk)
  }

  func adopt(sandboxId: String, runtimeDirectory: String) -> VMHandle? {
    vms.withLock { vms in
      vms.values.first {
        $0.handle.sandboxId == sandboxId && $0.handle.runtimeDirectory == runtimeDirectory
      }?.handle
    }
  }

  /// The "memory" is the sandbox id the VM's agent answers as.
  func saveState(_ handle: VMHandle, into directory: String) async throws -> SavedVMState {
    try faults.check(.saveState)
    let identity = vms.withLock { $0[handle.pid]?.agent?.sandboxId } ?? handle.sandboxId
    let state = SavedVMState(
      format: .qemuMemoryFile, memoryPath: "\(directory)/memory",
      devicesPath: "\(directory)/devices.state")
    try Data(identity.utf8).write(to: URL(fileURLWithPath: state.memoryPath))
    try Data().write(to: URL(fileURLWithPath: state.devicesPath))
    return state
  }

  func restore(_ spec: VMSpec, from state: SavedVMState) async throws -> VMHandle {
    try faults.check(.restore)
    let identity = try String(contentsOfFile: state.memoryPath, encoding: .utf8)
    let handle = try await start(spec, answeringAs: identity)
    vms.withLock { $0[handle.pid]?.paused = true }
    return handle
  }
}
