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
            await pump(started, request: request, timedOut: timedOut, outbound: outbound)
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

  /// Forwards output until the process exits, then sends `exit` and closes.
  static func pump(
    _ process: RunningProcess, request: ExecRequest, timedOut: OnceFlag,
    outbound: WebSocketOutboundWriter
  ) async {
    let began = ContinuousClock.now
    try? await send(ExecStreamFrame(type: .started, pid: process.pid), outbound)
    let (frames, continuation) = AsyncStream.makeStream(of: ExecStreamFrame.self)
    let outputs = process.takeOutputs()
    let reader = PipeReader(sources: [(outputs.stdout, .stdout), (outputs.stderr, .stderr)]) {
      stream, bytes in
      continuation.yield(
        ExecStreamFrame(
          type: stream == .stdout ? .stdout : .stderr, data: String(decoding: bytes, as: UTF8.self))
      )
    }
    let readerDone = reader.start()
    let writer = Task {
      for await frame in frames { try? await send(frame, outbound) }
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
    try? await send(
      ExecStreamFrame(
        type: .exit, exitCode: status.code, timedOut: timedOut.isSet,
        durationMs: (ContinuousClock.now - began).wholeMilliseconds), outbound)
    try? await outbound.close(.normalClosure, reason: nil)
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
