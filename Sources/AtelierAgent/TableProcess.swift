import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// One process of the table: its output fanned out to every subscriber. Each subscriber has
/// at most `queueLimit` bytes queued; while one is full the process's output is not read (it
/// waits, as on a slow terminal), and a subscriber that takes nothing for `stallTimeout` is
/// cut off (its stream ends without `end`; it may attach again). With no subscriber, output
/// is dropped.
final class TableProcess: Sendable {
  let info: GuestProcess
  var pid: Int32 { info.pid }
  let io: ProcessIO
  let queueLimit: Int
  let stallTimeout: Duration
  private let state = Mutex(State())

  struct State {
    var subscribers: [Int: Subscriber] = [:]
    var next = 0
    var end: ProcessEventFrame?
  }

  struct Subscriber {
    var continuation: AsyncStream<ProcessEventFrame>.Continuation
    /// Bytes yielded to it and not yet written out.
    var pending = 0
  }

  init(info: GuestProcess, io: ProcessIO, queueLimit: Int, stallTimeout: Duration) {
    self.info = info
    self.io = io
    self.queueLimit = queueLimit
    self.stallTimeout = stallTimeout
  }

  /// A stream that begins with `start`, then the output from now on, then `end`.
  func subscribe() -> ProcessSubscription {
    let (stream, continuation) = AsyncStream.makeStream(of: ProcessEventFrame.self)
    continuation.yield(ProcessEventFrame(type: .start, pid: pid))
    let token = state.withLock { state in
      let token = state.next
      state.next += 1
      if let end = state.end {
        continuation.yield(end)
        continuation.finish()
      } else {
        state.subscribers[token] = Subscriber(continuation: continuation)
      }
      return token
    }
    continuation.onTermination = { [weak self] _ in self?.unsubscribe(token) }
    return ProcessSubscription(events: stream, token: token)
  }

  /// (Streams are finished outside the lock: finishing one runs its `onTermination`, which
  /// comes back here.)
  func unsubscribe(_ token: Int) {
    let removed = state.withLock { $0.subscribers.removeValue(forKey: token) }
    removed?.continuation.finish()
  }

  /// A subscriber wrote out a frame carrying `count` bytes of (base64) data.
  func consumed(_ token: Int, _ count: Int) {
    state.withLock { $0.subscribers[token]?.pending -= count }
  }

  var subscriberCount: Int { state.withLock { $0.subscribers.count } }

  /// Reads output until the process has exited, then delivers `end` and calls `onEnd`.
  func run(timeout: Duration?, onEnd: @escaping @Sendable () -> Void) {
    let kind: ProcessEventFrame.Kind = io.terminal ? .pty : .stdout
    let reader = PipeReader(sources: io.sources) { [self] stream, bytes in
      deliver(stream == .stderr ? .stderr : kind, bytes)
    }
    let readerDone = reader.start()
    let timer = timeout.map { timeout in
      Task { [pid] in
        try? await Task.sleep(for: timeout)
        if !Task.isCancelled { kill(-pid, SIGKILL) }
      }
    }
    Task {
      let status = await ProcessReaper.shared.waitForExit(pid)
      timer?.cancel()
      reader.processExited()
      await readerDone.value
      io.input.close()
      finish(Self.endFrame(status))
      onEnd()
    }
  }

  /// Fans a chunk out: first waits (on the reader's thread) for room in every subscriber's
  /// queue, then cuts off those that made none in `stallTimeout`. Queues are counted in the
  /// bytes of the frames' (base64) data, as subscribers give them back.
  func deliver(_ kind: ProcessEventFrame.Kind, _ bytes: [UInt8]) {
    let frame = ProcessEventFrame(type: kind, data: Data(bytes).base64EncodedString())
    let size = frame.data?.utf8.count ?? 0
    let deadline = ContinuousClock.now + stallTimeout
    while ContinuousClock.now < deadline {
      let full = state.withLock { state in
        state.subscribers.values.contains { $0.pending > 0 && $0.pending + size > queueLimit }
      }
      if !full { break }
      usleep(2000)
    }
    let stalled = state.withLock { state in
      var stalled: [AsyncStream<ProcessEventFrame>.Continuation] = []
      for (token, subscriber) in state.subscribers {
        if subscriber.pending > 0 && subscriber.pending + size > queueLimit {
          stalled.append(subscriber.continuation)
          state.subscribers[token] = nil
        } else {
          state.subscribers[token]?.pending += size
          subscriber.continuation.yield(frame)
        }
      }
      return stalled
    }
    for continuation in stalled { continuation.finish() }
  }

  func finish(_ end: ProcessEventFrame) {
    let subscribers = state.withLock { state in
      state.end = end
      defer { state.subscribers = [:] }
      return Array(state.subscribers.values)
    }
    for subscriber in subscribers {
      subscriber.continuation.yield(end)
      subscriber.continuation.finish()
    }
  }

  // MARK: Control

  func write(_ bytes: [UInt8]) async throws {
    guard io.input.isOpen else {
      throw APIError.conflict("process \(pid) has no stdin open (start it with stdin: true)")
    }
    guard await io.input.write(bytes) else {
      throw APIError.conflict("process \(pid) does not take input any more")
    }
  }

  func closeStdin() throws {
    guard !io.terminal else {
      throw APIError.conflict("process \(pid) runs on a terminal: send Ctrl-D (0x04) instead")
    }
    io.input.close()
  }

  func resize(_ size: TerminalSize) throws {
    guard io.terminal else { throw APIError.conflict("process \(pid) has no terminal") }
    guard GuestFormats.terminalSizeRange.contains(size.cols),
      GuestFormats.terminalSizeRange.contains(size.rows)
    else { throw APIError.badRequest("cols and rows must be between 1 and 1000") }
    io.input.resize(size)
  }

  /// Signals the process's whole group (it has its own session).
  func signal(_ signal: Int32) {
    kill(-pid, signal)
  }

  // MARK: How it ended

  /// What Go's `os.ProcessState` would say, as E2B's clients expect: the code (-1 for a
  /// signal), whether it exited by itself, and "exit status N" or "signal: killed".
  static func endFrame(_ status: ExitStatus) -> ProcessEventFrame {
    switch status {
    case .exited(let code):
      let text = "exit status \(code)"
      return ProcessEventFrame(
        type: .end, exitCode: code, exited: true, status: text, error: code == 0 ? nil : text)
    case .signaled(let signal):
      let text = "signal: \(signalName(signal))"
      return ProcessEventFrame(type: .end, exitCode: -1, exited: false, status: text, error: text)
    }
  }

  static func signalName(_ signal: Int32) -> String {
    switch signal {
    case SIGKILL: "killed"
    case SIGTERM: "terminated"
    case SIGINT: "interrupt"
    case SIGHUP: "hangup"
    case SIGQUIT: "quit"
    case SIGPIPE: "broken pipe"
    case SIGSEGV: "segmentation fault"
    case SIGABRT: "aborted"
    default: "signal \(signal)"
    }
  }
}
