import Synchronization

/// A named step a fake driver can be told to fail at, so every undo path of the orchestrator
/// can be walked without a VM.
enum FakeStep: String, CaseIterable, Sendable {
  case clone, attach, boot, agentReady, restore, saveState, pause, resume, switchDisk, freeze
}

struct FakeFailure: Error, CustomStringConvertible {
  var step: FakeStep
  var description: String { "injected failure at \(step.rawValue)" }
}

/// The steps that fail (or take their time), shared by the fakes of one test.
final class FaultPlan: Sendable {
  private let failing = Mutex<Set<FakeStep>>([])
  private let delays = Mutex<[FakeStep: Duration]>([:])
  func fail(at step: FakeStep) { _ = failing.withLock { $0.insert(step) } }
  func heal(_ step: FakeStep) { _ = failing.withLock { $0.remove(step) } }
  func delay(_ step: FakeStep, by duration: Duration) { delays.withLock { $0[step] = duration } }
  func check(_ step: FakeStep) throws {
    if failing.withLock({ $0.contains(step) }) { throw FakeFailure(step: step) }
  }
  /// Waits as long as `step` is told to take, then fails if it is told to.
  func pass(_ step: FakeStep) async throws {
    if let delay = delays.withLock({ $0[step] }) { try await Task.sleep(for: delay) }
    try check(step)
  }
}
