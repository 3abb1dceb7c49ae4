import CAtelierSys
import Dispatch

#if canImport(Glibc)
  import Glibc
#endif

/// A started child whose standard streams are pipes the caller drives (streaming exec, tar
/// archives). The caller closes what it takes; `closeAll` is safe to call at any time.
public final class RunningProcess: @unchecked Sendable {
  public let pid: Int32
  /// Write end of the child's stdin, or -1.
  public private(set) var stdin: Int32
  /// Read ends of the child's stdout and stderr, or -1.
  public private(set) var stdout: Int32
  public private(set) var stderr: Int32
  let newSession: Bool

  init(pid: Int32, stdin: Int32, stdout: Int32, stderr: Int32, newSession: Bool) {
    self.pid = pid
    self.stdin = stdin
    self.stdout = stdout
    self.stderr = stderr
    self.newSession = newSession
  }

  /// Starts `options` with pipes for the streams asked for (others go to /dev/null).
  public static func start(
    _ options: SpawnOptions, stdin wantStdin: Bool, stdout wantStdout: Bool,
    stderr wantStderr: Bool
  ) throws -> RunningProcess {
    let input = wantStdin ? try Pipe() : nil
    let output = wantStdout ? try Pipe() : nil
    let errors = wantStderr ? try Pipe() : nil
    var spawnOptions = options
    spawnOptions.stdin = input?.readEnd
    spawnOptions.stdout = output?.writeEnd
    spawnOptions.stderr = errors?.writeEnd
    let pid: Int32
    do {
      pid = try ProcessReaper.shared.spawn(spawnOptions)
    } catch {
      [input, output, errors].forEach { $0?.closeBoth() }
      throw error
    }
    input?.closeReadEnd()
    output?.closeWriteEnd()
    errors?.closeWriteEnd()
    return RunningProcess(
      pid: pid, stdin: input?.takeWriteEnd() ?? -1, stdout: output?.takeReadEnd() ?? -1,
      stderr: errors?.takeReadEnd() ?? -1, newSession: options.newSession)
  }

  /// Hands stdout and stderr to the caller (e.g. a `PipeReader`, which closes them).
  public func takeOutputs() -> (stdout: Int32, stderr: Int32) {
    defer {
      stdout = -1
      stderr = -1
    }
    return (stdout, stderr)
  }

  public func closeStdin() {
    if stdin >= 0 { close(stdin) }
    stdin = -1
  }

  public func closeAll() {
    closeStdin()
    if stdout >= 0 { close(stdout) }
    if stderr >= 0 { close(stderr) }
    stdout = -1
    stderr = -1
  }

  /// Signals the process (its whole group when it has its own session).
  public func signal(_ signal: Int32) {
    kill(newSession ? -pid : pid, signal)
  }

  public func waitForExit() async -> ExitStatus {
    await ProcessReaper.shared.waitForExit(pid)
  }
}

/// Blocking reads and writes moved off Swift's cooperative threads.
public enum BlockingIO {
  /// Up to `size` bytes; empty at end of file or on error.
  public static func read(_ fd: Int32, size: Int = 65536) async -> [UInt8] {
    await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        var buffer = [UInt8](repeating: 0, count: size)
        var count = 0
        repeat {
          count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        } while count < 0 && errno == EINTR
        continuation.resume(returning: count > 0 ? Array(buffer[0..<count]) : [])
      }
    }
  }

  /// Writes everything; false when the reader went away or the write failed.
  public static func write(_ fd: Int32, _ bytes: [UInt8]) async -> Bool {
    await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        var offset = 0
        var ok = true
        bytes.withUnsafeBytes { raw in
          while offset < raw.count {
            let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
            if n > 0 {
              offset += n
            } else if n < 0 && errno == EINTR {
              continue
            } else {
              ok = false
              return
            }
          }
        }
        continuation.resume(returning: ok)
      }
    }
  }
}
