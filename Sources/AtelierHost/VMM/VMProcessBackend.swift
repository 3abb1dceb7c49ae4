import Foundation

/// What both backends share: a VM is one process whose pid file is in its runtime directory,
/// and whose console is relayed into capped files there (`ConsoleLog`). Adoption after a
/// manager restart and console tails work the same for both.
public protocol VMProcessBackend: VirtualMachineManager {
  /// The pid file of the VM whose runtime directory is `runtimeDirectory`.
  func pidFile(_ runtimeDirectory: String) -> String
  /// The most the console log files of one VM hold.
  var consoleCapBytes: Int { get }
}

extension VMProcessBackend {
  /// Handle for a runtime directory whose pid file names a live VM of this sandbox. The pid
  /// file may have been written by the VM's user: `isRunning` checks the process is ours.
  public func adopt(sandboxId: String, runtimeDirectory: String) -> VMHandle? {
    guard let pid = HostProcesses.pid(inFile: pidFile(runtimeDirectory)) else { return nil }
    let handle = VMHandle(sandboxId: sandboxId, pid: pid, runtimeDirectory: runtimeDirectory)
    return isRunning(handle) ? handle : nil
  }

  public func consoleTail(runtimeDirectory: String, lines: Int) -> String {
    ConsoleLog(runtimeDirectory: runtimeDirectory).tail(lines: lines)
  }

  /// The console relay starts again on the FIFO the VMM still writes to.
  public func reattach(_ handle: VMHandle) async {
    let console = ConsoleLog(runtimeDirectory: handle.runtimeDirectory)
    guard (try? ConsoleRelays.shared.start(console, capBytes: consoleCapBytes)) != nil else {
      return
    }
    ConsoleRelays.shared.watch(handle.runtimeDirectory, pid: handle.pid)
  }

  /// A fresh console FIFO with its relay running, before the VMM starts.
  func startConsole(_ runtimeDirectory: String, owner: VMUser?) throws -> ConsoleLog {
    let console = ConsoleLog(runtimeDirectory: runtimeDirectory)
    ConsoleRelays.shared.stop(runtimeDirectory)
    try console.prepare(owner: owner)
    try ConsoleRelays.shared.start(console, capBytes: consoleCapBytes)
    return console
  }
}
