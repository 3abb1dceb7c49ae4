import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import HummingbirdWebSocket
import Logging
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// `…/exec/stream`: one command over a WebSocket, with stdin in and stdout/stderr out as they
/// happen (see `ExecStreamFrame`).
enum ExecStream {
  static func handle(
    inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, logger: Logger
  )
    async throws
  {
    var process: RunningProcess?
    var watcher: Task<Void, Never>?
    let timedOut = OnceFlag()
    for try await message in inbound.messages(maxSize: 16 << 20) {
      guard case .text(let text) = message,
        let data = Optional(Data(text.utf8))
      else {
        if let process, case .binary(let buffer) = message {
          _ = await BlockingIO.write(process.stdin, Array(buffer.readableBytesView))
        }
        continue
      }
      guard let running = process else {
        // The first frame is the request.
        do {
          let request = try JSONDecoder().decode(ExecRequest.self, from: data)
          let started = try RunningProcess.start(
            ExecService.spawnOptions(for: request), stdin: true, stdout: true, stderr: true)
          process = started
          watcher = Task {
            await pump(
              started, request: request, timedOut: timedOut, sink: WebSocketFrameSink(outbound))
          }
        } catch {
          try await send(ExecStreamFrame(type: .error, message: describe(error)), outbound)
          try await outbound.close(.unacceptableData, reason: "bad request")
          return
        }
        continue
      }
      guard let frame = try? JSONDecoder().decode(ExecStreamFrame.self, from: data) else {
        continue
      }
      switch frame.type {
      case .stdin:
        if let input = frame.data { _ = await BlockingIO.write(running.stdin, Array(input.utf8)) }
      case .closeStdin:
        running.closeStdin()
      case .signal:
        running.signal(signalNumber(frame.signal) ?? SIGTERM)
      default:
        break
      }
    }
    // The client went away: the command goes with it.
    if let process, ProcessReaper.shared.isRunning(process.pid) { process.signal(SIGKILL) }
    await watcher?.value
  }

  /// Forwards output until the process exits, then sends `exit` and closes. Output waits in
  /// a queue of at most `queueLimit` bytes for the client; while it is full the pipes are not
  /// read (the command waits, as it would writing to a slow terminal). A client that takes
  /// nothing for `stallTimeout` is disconnected (close code 4008) and the command killed,
  /// rather than the queue growing without bound.
  static func pump(
    _ process: RunningProcess, request: ExecRequest, timedOut: OnceFlag, sink: some FrameSink,
    queueLimit: Int = AgentProtocol.streamQueueLimit,
    stallTimeout: Duration = AgentProtocol.streamStallTimeout
  ) async {
    let began = ContinuousClock.now
    try? await sink.send(ExecStreamFrame(type: .started, pid: process.pid))
    let (frames, continuation) = AsyncStream.makeStream(of: (ExecStreamFrame, Int).self)
    let queue = ByteBudget(limit: queueLimit)
    let outputs = process.takeOutputs()
    let reader = PipeReader(sources: [(outputs.stdout, .stdout), (outputs.stderr, .stderr)]) {
      stream, bytes in
      guard queue.take(bytes.count, waitingUpTo: stallTimeout) else {
        if queue.overflowed() { process.signal(SIGKILL) }
        return
      }
      let frame = ExecStreamFrame(
        type: stream == .stdout ? .stdout : .stderr, data: String(decoding: bytes, as: UTF8.self))
      continuation.yield((frame, bytes.count))
    }
    let readerDone = reader.start()
    let writer = Task {
      for await (frame, size) in frames {
        if queue.isOverflowed { break }
        try? await sink.send(frame)
        queue.give(back: size)
      }
    }
    let timer = request.timeoutMs.map { milliseconds in
      Task {
        try? await Task.sleep(for: .milliseconds(milliseconds))
        if Task.isCancelled { return }
        timedOut.set()
        process.signal(SIGKILL)
      }
    }
    let status = await process.waitForExit()
    timer?.cancel()
    reader.processExited()
    await readerDone.value
    continuation.finish()
    await writer.value
    process.closeAll()
    if queue.isOverflowed {
      await sink.close(code: 4008, reason: "output not read in time")
      return
    }
    try? await sink.send(
      ExecStreamFrame(
        type: .exit, exitCode: status.code, timedOut: timedOut.isSet,
        durationMs: (ContinuousClock.now - began).wholeMilliseconds))
    await sink.close(code: 1000, reason: nil)
  }

  static func send(_ frame: ExecStreamFrame, _ outbound: WebSocketOutboundWriter) async throws {
    let data = try JSONEncoder().encode(frame)
    try await outbound.write(.text(String(decoding: data, as: UTF8.self)))
  }

  static func signalNumber(_ name: String?) -> Int32? {
    guard let name else { return nil }
    if let number = Int32(name) { return number }
    switch (name.uppercased().hasPrefix("SIG")
      ? String(name.uppercased().dropFirst(3)) : name.uppercased())
    {
    case "TERM": return SIGTERM
    case "KILL": return SIGKILL
    case "INT": return SIGINT
    case "HUP": return SIGHUP
    case "QUIT": return SIGQUIT
    case "USR1": return SIGUSR1
    case "USR2": return SIGUSR2
    default: return nil
    }
  }

  static func describe(_ error: any Error) -> String {
    if let error = error as? APIErrorDescribable { return error.apiMessage }
    if error is DecodingError { return "the first frame must be an exec request (JSON)" }
    return "\(error)"
  }
}

/// Errors with a message meant for API callers.
protocol APIErrorDescribable { var apiMessage: String { get } }

extension APIError: APIErrorDescribable {
  var apiMessage: String { message }
}

/// Where a stream's frames go (the WebSocket; a recorder in tests).
protocol FrameSink: Sendable {
  func send(_ frame: ExecStreamFrame) async throws
  func close(code: Int, reason: String?) async
}

struct WebSocketFrameSink: FrameSink {
  let outbound: WebSocketOutboundWriter
  init(_ outbound: WebSocketOutboundWriter) { self.outbound = outbound }

  func send(_ frame: ExecStreamFrame) async throws {
    try await ExecStream.send(frame, outbound)
  }

  func close(code: Int, reason: String?) async {
    try? await outbound.close(.init(codeNumber: code), reason: reason)
  }
}

/// Bytes queued for a slow consumer: taken when queued, given back when written out. Once a
/// take would pass the limit it stays overflowed.
final class ByteBudget: Sendable {
  private let state: Mutex<(used: Int, overflowed: Bool, reported: Bool)>
  let limit: Int

  init(limit: Int) {
    self.limit = limit
    state = Mutex((0, false, false))
  }

  /// Takes room for `count` bytes, waiting (on this blocking thread) up to `timeout` for the
  /// consumer to give some back; false, and overflowed from then on, when it did not.
  func take(_ count: Int, waitingUpTo timeout: Duration) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
      let taken = state.withLock { state -> Bool? in
        if state.overflowed { return false }
        // A chunk larger than the whole limit still goes alone into an empty queue.
        if state.used + count <= limit || state.used == 0 {
          state.used += count
          return true
        }
        if ContinuousClock.now >= deadline {
          state.overflowed = true
          return false
        }
        return nil
      }
      if let taken { return taken }
      usleep(2000)
    }
  }

  func give(back count: Int) {
    state.withLock { $0.used -= count }
  }

  var isOverflowed: Bool { state.withLock { $0.overflowed } }

  /// True once, on the first call after the overflow (so it is acted on once).
  func overflowed() -> Bool {
    state.withLock { state in
      guard state.overflowed, !state.reported else { return false }
      state.reported = true
      return true
    }
  }

  var used: Int { state.withLock { $0.used } }
}
