import CAtelierSys
import Dispatch
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// What a finished command produced.
public struct RunResult: Sendable {
  public var status: ExitStatus
  public var stdout: [UInt8]
  public var stderr: [UInt8]
  /// Output beyond the limit was dropped.
  public var truncated: Bool
  /// The command ran past its timeout and its process group was killed.
  public var timedOut: Bool
  public var durationMs: Int

  public var exitCode: Int32 { status.code }
  public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
  public var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// Which stream a chunk of output came from.
public enum OutputStream: Sendable { case stdout, stderr }

public enum ProcessRunner {
  /// How long output is still read after the command exits: background children that kept
  /// the pipes open must not hold the caller forever.
  static let drainGrace: Duration = .milliseconds(200)

  /// Runs a command to completion, collecting at most `outputLimit` bytes of each stream.
  public static func run(
    _ options: SpawnOptions, input: [UInt8]? = nil, timeout: Duration? = nil,
    outputLimit: Int = 10 << 20
  ) async throws -> RunResult {
    let collected = Mutex<(stdout: [UInt8], stderr: [UInt8], truncated: Bool)>(([], [], false))
    let outcome = try await stream(options, input: input, timeout: timeout) { stream, bytes in
      collected.withLock { state in
        let current = stream == .stdout ? state.stdout.count : state.stderr.count
        let room = max(0, outputLimit - current)
        if bytes.count > room { state.truncated = true }
        let kept = bytes.prefix(room)
        if stream == .stdout { state.stdout += kept } else { state.stderr += kept }
      }
    }
    return collected.withLock { state in
      RunResult(
        status: outcome.status, stdout: state.stdout, stderr: state.stderr,
        truncated: state.truncated, timedOut: outcome.timedOut, durationMs: outcome.durationMs)
    }
  }

  public struct StreamOutcome: Sendable {
    public var status: ExitStatus
    public var timedOut: Bool
    public var durationMs: Int
  }

  /// Runs a command, handing each chunk of output to `onOutput` as it arrives (on a reader
  /// thread, in order per stream). `input` (if any) is written to stdin, which is then closed.
  public static func stream(
    _ options: SpawnOptions, input: [UInt8]? = nil, timeout: Duration? = nil,
    onOutput: @escaping @Sendable (OutputStream, [UInt8]) -> Void
  ) async throws -> StreamOutcome {
    let started = ContinuousClock.now
    let stdoutPipe = try Pipe()
    let stderrPipe = try Pipe()
    let stdinPipe = input == nil ? nil : try Pipe()
    var spawnOptions = options
    spawnOptions.stdin = stdinPipe?.readEnd
    spawnOptions.stdout = stdoutPipe.writeEnd
    spawnOptions.stderr = stderrPipe.writeEnd
    let pid: Int32
    do {
      pid = try ProcessReaper.shared.spawn(spawnOptions)
    } catch {
      [stdoutPipe, stderrPipe].forEach { $0.closeBoth() }
      stdinPipe?.closeBoth()
      throw error
    }
    stdoutPipe.closeWriteEnd()
    stderrPipe.closeWriteEnd()
    if let stdinPipe, let input {
      stdinPipe.closeReadEnd()
      let writeEnd = stdinPipe.takeWriteEnd()
      DispatchQueue.global().async {
        writeAll(fd: writeEnd, input)
        close(writeEnd)
      }
    }
    let reader = PipeReader(
      sources: [(stdoutPipe.takeReadEnd(), .stdout), (stderrPipe.takeReadEnd(), .stderr)],
      onOutput: onOutput)
    let readerDone = reader.start()

    let timedOut = OnceFlag()
    let target = options.newSession ? -pid : pid
    let timer: Task<Void, Never>? = timeout.map { timeout in
      Task {
        try? await Task.sleep(for: timeout)
        if Task.isCancelled { return }
        timedOut.set()
        kill(target, SIGKILL)
      }
    }
    let status = await ProcessReaper.shared.waitForExit(pid)
    timer?.cancel()
    reader.processExited()
    await readerDone.value
    let elapsed = ContinuousClock.now - started
    return StreamOutcome(
      status: status, timedOut: timedOut.isSet,
      durationMs: elapsed.wholeMilliseconds)
  }
}

/// Writes every byte, retrying on short writes and EINTR; stops quietly when the reader is gone.
/// True when everything was written.
@discardableResult
public func writeAll(fd: Int32, _ bytes: [UInt8]) -> Bool {
  var offset = 0
  return bytes.withUnsafeBytes { raw in
    while offset < raw.count {
      let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
      if n > 0 {
        offset += n
      } else if n < 0 && errno == EINTR {
        continue
      } else {
        return false
      }
    }
    return true
  }
}

/// A close-on-exec pipe whose ends are closed exactly once.
final class Pipe: @unchecked Sendable {
  private(set) var readEnd: Int32
  private(set) var writeEnd: Int32

  init() throws {
    var fds: [Int32] = [0, 0]
    guard atelier_pipe_cloexec(&fds) == 0 else {
      throw SpawnError(executable: "pipe", errno: errno)
    }
    readEnd = fds[0]
    writeEnd = fds[1]
  }

  func closeReadEnd() {
    if readEnd >= 0 { close(readEnd) }
    readEnd = -1
  }
  func closeWriteEnd() {
    if writeEnd >= 0 { close(writeEnd) }
    writeEnd = -1
  }
  func closeBoth() {
    closeReadEnd()
    closeWriteEnd()
  }
  func takeReadEnd() -> Int32 {
    defer { readEnd = -1 }
    return readEnd
  }
  func takeWriteEnd() -> Int32 {
    defer { writeEnd = -1 }
    return writeEnd
  }
}

/// Reads several descriptors on one blocking thread with poll(2) until each reaches EOF, or
/// until a short grace after the process exited. Closes the descriptors when done.
public final class PipeReader: Sendable {
  private let sources: [(Int32, OutputStream)]
  private let onOutput: @Sendable (OutputStream, [UInt8]) -> Void
  private let exitedAt = Mutex<ContinuousClock.Instant?>(nil)

  public init(
    sources: [(Int32, OutputStream)], onOutput: @escaping @Sendable (OutputStream, [UInt8]) -> Void
  ) {
    self.sources = sources
    self.onOutput = onOutput
  }

  public func processExited() {
    exitedAt.withLock { $0 = ContinuousClock.now }
  }

  public func start() -> Task<Void, Never> {
    Task {
      await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        OSThread { [self] in
          self.loop()
          continuation.resume()
        }.start()
      }
    }
  }

  private func loop() {
    var open = sources
    var buffer = [UInt8](repeating: 0, count: 65536)
    defer { open.forEach { close($0.0) } }
    // After the grace, what is already in the pipes is still read (this thread may first run
    // only after the grace, under load), but nothing is waited for: a background child may
    // hold the pipe open forever. A bounded number of reads, as it may also keep writing.
    var readsAfterGrace = 0
    while !open.isEmpty {
      let graceOver =
        exitedAt.withLock { $0 }.map { ContinuousClock.now - $0 > ProcessRunner.drainGrace }
        ?? false
      if graceOver {
        readsAfterGrace += 1
        if readsAfterGrace > 64 { return }
      }
      var fds = open.map { pollfd(fd: $0.0, events: Int16(POLLIN), revents: 0) }
      let ready = poll(&fds, nfds_t(fds.count), graceOver ? 0 : 50)
      if ready <= 0 {
        if graceOver { return }
        continue
      }
      var closed: [Int32] = []
      for (index, entry) in fds.enumerated() where entry.revents != 0 {
        let n = buffer.withUnsafeMutableBytes { read(entry.fd, $0.baseAddress!, $0.count) }
        if n > 0 {
          onOutput(open[index].1, Array(buffer[0..<n]))
        } else if n == 0 || (errno != EINTR && errno != EAGAIN) {
          closed.append(entry.fd)
        }
      }
      for fd in closed {
        close(fd)
        open.removeAll { $0.0 == fd }
      }
    }
  }
}

extension Duration {
  /// Whole milliseconds, for JSON fields such as `durationMs`.
  public var wholeMilliseconds: Int {
    Int(components.seconds) * 1000 + Int(components.attoseconds / 1_000_000_000_000_000)
  }
}

/// A thread-safe boolean that only ever goes from false to true.
public final class OnceFlag: Sendable {
  private let value = Mutex(false)
  public init() {}
  public func set() { value.withLock { $0 = true } }
  public var isSet: Bool { value.withLock { $0 } }
}
