import AtelierAgentAPI
import AtelierProcess
import Foundation
import Logging
import Synchronization
import Testing

@testable import AtelierAgent

/// Frames written slowly, as a client on a slow link reads them.
final class SlowSink: FrameSink {
  let frames = Mutex<[ExecStreamFrame]>([])
  let closeCode = Mutex<Int?>(nil)
  let delay: Duration

  init(delay: Duration) { self.delay = delay }

  func send(_ frame: ExecStreamFrame) async throws {
    try? await Task.sleep(for: delay)
    frames.withLock { $0.append(frame) }
  }

  func close(code: Int, reason: String?) async {
    closeCode.withLock { $0 = code }
  }
}

@Suite(.timeLimit(.minutes(2))) struct BoundedOutputTests {
  @Test func batchOutputIsCappedInTotal() async throws {
    let command = ExecRequest(command: "head -c 300000 /dev/zero | tr '\\0' a; echo err >&2")
    let result = try await ExecService.batch(
      ExecBatchRequest(commands: [command, command, command]), totalOutputLimit: 500_000)
    let total = result.results.reduce(0) { $0 + $1.stdout.utf8.count + $1.stderr.utf8.count }
    #expect(result.results.count == 3)
    #expect(total <= 500_000)
    #expect(result.results[0].truncated == false, "positive control: the first fits")
    #expect(result.results[0].stdout.utf8.count == 300_000)
    #expect(result.results[1].truncated && result.results[2].truncated)
    #expect(result.results[2].stdout.isEmpty)
  }

  @Test func aSlowStreamingClientIsDisconnectedAndTheCommandKilled() async throws {
    let request = ExecRequest(argv: ["/bin/sh", "-c", "cat /dev/zero"])
    let process = try RunningProcess.start(
      ExecService.spawnOptions(for: request), stdin: false, stdout: true, stderr: true)
    // A client that takes one frame a second, where the command writes as fast as it can.
    let sink = SlowSink(delay: .seconds(1))
    await ExecStream.pump(
      process, request: request, timedOut: OnceFlag(), sink: sink, queueLimit: 1 << 20,
      stallTimeout: .milliseconds(300))
    #expect(sink.closeCode.withLock { $0 } == 4008)
    #expect(!ProcessReaper.shared.isRunning(process.pid))
    #expect(sink.frames.withLock { $0.contains { $0.type == .exit } } == false)
  }

  @Test func aFastStreamingClientGetsEverything() async throws {
    let request = ExecRequest(argv: ["/bin/sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' b"])
    let process = try RunningProcess.start(
      ExecService.spawnOptions(for: request), stdin: false, stdout: true, stderr: true)
    // Slower than the command but never stalled: the command waits, nothing is lost.
    let sink = SlowSink(delay: .milliseconds(1))
    await ExecStream.pump(
      process, request: request, timedOut: OnceFlag(), sink: sink, queueLimit: 1 << 20,
      stallTimeout: .seconds(10))
    let frames = sink.frames.withLock { $0 }
    #expect(sink.closeCode.withLock { $0 } == 1000)
    #expect(frames.last?.type == .exit && frames.last?.exitCode == 0)
    #expect(
      frames.reduce(0) { $0 + ($1.type == .stdout ? $1.data?.utf8.count ?? 0 : 0) } == 3_000_000)
  }

  func waitForExit(_ terminals: TerminalService, _ id: String) async throws {
    let deadline = ContinuousClock.now + .seconds(20)
    while terminals.list().contains(where: { $0.id == id }) && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    #expect(!terminals.list().contains { $0.id == id })
  }

  /// Input after the shell exited must not reach whatever file reuses the terminal's number.
  @Test func terminalInputAfterExitGoesNowhere() async throws {
    let terminals = TerminalService(logger: Logger(label: "test"))
    let info = try terminals.create(
      TerminalCreateRequest(command: ["/bin/sh", "-c", "exit 0"], user: "root"))
    let session = try terminals.session(info.id)
    #expect(session.master.readDescriptor >= 0)
    try await waitForExit(terminals, info.id)
    #expect(session.master.readDescriptor == -1, "the terminal stays open after its shell")
    #expect(await session.write(Array("ls\n".utf8)) == false)
  }

  /// The same at the descriptor, with the number really reused: a high one no other test of
  /// this process takes (the kernel hands out the lowest free), so taking it again is safe.
  @Test func aClosedTerminalNeverWritesToTheFileThatReusedItsNumber() async throws {
    var first: [Int32] = [0, 0]
    var second: [Int32] = [0, 0]
    #expect(pipe(&first) == 0 && pipe(&second) == 0)
    defer { [first[0], first[1], second[0], second[1]].forEach { close($0) } }
    let number = fcntl(first[1], F_DUPFD_CLOEXEC, 900)
    #expect(number >= 900)
    let master = PTYMaster(number)
    #expect(await master.write(Array("before".utf8)), "positive control: it writes while open")
    master.close()
    #expect(dup2(second[1], number) == number)
    defer { close(number) }
    #expect(await master.write(Array("rm -rf /\n".utf8)) == false)
    _ = fcntl(second[0], F_SETFL, O_NONBLOCK)
    var buffer = [UInt8](repeating: 0, count: 64)
    #expect(read(second[0], &buffer, 64) == -1, "the input went into the other file")
  }

  @Test func terminalInputWhileTheShellRunsArrives() async throws {
    let terminals = TerminalService(logger: Logger(label: "test"))
    let info = try terminals.create(
      TerminalCreateRequest(command: ["/bin/sh", "-c", "read line; exit 3"], user: "root"))
    let session = try terminals.session(info.id)
    #expect(await session.write(Array("go\n".utf8)))
    try await waitForExit(terminals, info.id)
  }

  @Test func aTerminalClientThatStallsIsCutOffAndOthersGetEverything() async throws {
    let terminals = TerminalService(logger: Logger(label: "test"), stallTimeout: .seconds(5))
    let info = try terminals.create(
      TerminalCreateRequest(
        command: ["/bin/sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' x; sleep 1"],
        user: "root"))
    let session = try terminals.session(info.id)
    let slow = session.attach()
    let fast = session.attach()
    // What the shell wrote before this client attached comes as its replay (on a loaded
    // machine the first chunks may be out before the attach).
    var fastBytes = fast.replay.count
    var fastEnd: TerminalSessionState.Event?
    for await event in fast.events {
      switch event {
      case .output(let bytes):
        fastBytes += bytes.count
        session.consumed(fast.token, bytes.count)
      default:
        fastEnd = event
      }
    }
    var slowBytes = 0
    var slowEnd: TerminalSessionState.Event?
    for await event in slow.events {
      if case .output(let bytes) = event { slowBytes += bytes.count } else { slowEnd = event }
    }
    if case .exit = fastEnd {} else { Issue.record("the fast client did not see the exit") }
    #expect(fastBytes >= 20_000_000)
    if case .overflow = slowEnd {} else { Issue.record("the slow client was not cut off") }
    #expect(slowBytes <= TerminalSessionState.defaultClientQueueLimit)
    try await waitForExit(terminals, info.id)
  }
}
