import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import CAtelierSys
import Dispatch
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// Processes that outlive the request that started them: started with a stream of their
/// events, attached to again by pid, written to, signalled, resized. A process leaves the
/// table when it has exited and its `end` has been delivered.
final class ProcessTable: Sendable {
  private let processes = Mutex<[Int32: TableProcess]>([:])
  let queueLimit: Int
  let stallTimeout: Duration

  init(
    queueLimit: Int = AgentProtocol.streamQueueLimit,
    stallTimeout: Duration = AgentProtocol.streamStallTimeout
  ) {
    self.queueLimit = queueLimit
    self.stallTimeout = stallTimeout
  }

  func list() -> [GuestProcess] {
    processes.withLock { Array($0.values) }.map(\.info).sorted { $0.pid < $1.pid }
  }

  func process(_ pid: Int32) throws -> TableProcess {
    guard let process = processes.withLock({ $0[pid] }) else {
      throw APIError.notFound("no process \(pid)")
    }
    return process
  }

  /// Starts the process and subscribes to it before it can write anything: the stream
  /// holds all of its output.
  func start(_ request: ProcessStartRequest) throws -> (TableProcess, ProcessSubscription) {
    if let problem = request.validationProblem { throw APIError.badRequest(problem) }
    guard let user = GuestUser.resolve(request.user) else {
      throw APIError.notFound("unknown user \(request.user ?? "")")
    }
    let cwd = request.cwd ?? (directoryExists(user.home) ? user.home : "/")
    guard directoryExists(cwd) else { throw APIError.notFound("cwd \(cwd) does not exist") }
    var argv = request.argv
    // Clients written for images with bash (E2B's SDK runs `/bin/bash -l -c …`) work on
    // guests that have only a POSIX shell.
    if argv[0] == "/bin/bash" && access("/bin/bash", X_OK) != 0 { argv[0] = "/bin/sh" }
    var options = SpawnOptions(
      executable: argv[0], arguments: Array(argv.dropFirst()),
      environment: user.environment(extra: request.env), workingDirectory: cwd,
      credentials: user.uid == getuid() ? nil : user.credentials, newSession: true)
    let io: ProcessIO
    let pid: Int32
    do {
      (pid, io) =
        try request.pty.map { try Self.spawnOnTerminal(&options, size: $0) }
        ?? Self.spawnWithPipes(options, stdin: request.stdin ?? false)
    } catch let error as SpawnError {
      throw APIError.badRequest("\(error)")
    }
    let info = GuestProcess(
      pid: pid, tag: request.tag, argv: request.argv, env: request.env ?? [:], cwd: request.cwd,
      user: user.name, pty: request.pty != nil)
    let process = TableProcess(
      info: info, io: io, queueLimit: queueLimit, stallTimeout: stallTimeout)
    let subscription = process.subscribe()
    processes.withLock { $0[pid] = process }
    process.run(timeout: request.timeoutMs.map { .milliseconds($0) }) { [weak self] in
      _ = self?.processes.withLock { $0.removeValue(forKey: pid) }
    }
    return (process, subscription)
  }

  static func spawnWithPipes(_ options: SpawnOptions, stdin: Bool) throws -> (Int32, ProcessIO) {
    let running = try RunningProcess.start(options, stdin: stdin, stdout: true, stderr: true)
    let outputs = running.takeOutputs()
    let input = SharedDescriptor(running.stdin)
    return (
      running.pid,
      ProcessIO(
        input: input, terminal: false,
        sources: [(outputs.stdout, .stdout), (outputs.stderr, .stderr)])
    )
  }

  static func spawnOnTerminal(_ options: inout SpawnOptions, size: TerminalSize) throws
    -> (Int32, ProcessIO)
  {
    var master: Int32 = -1
    var slave: Int32 = -1
    guard atelier_openpty(&master, &slave, UInt16(size.rows), UInt16(size.cols)) == 0 else {
      throw APIError.internalError(
        "cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
    }
    defer { close(slave) }
    options.stdin = slave
    options.stdout = slave
    options.stderr = slave
    options.controllingTerminal = true
    let pid: Int32
    do {
      pid = try ProcessReaper.shared.spawn(options)
    } catch {
      close(master)
      throw error
    }
    // The reader gets its own descriptor: it closes it when done, while input and resizes
    // go through the shared one until the process has ended.
    let reading = dup(master)
    return (
      pid, ProcessIO(input: SharedDescriptor(master), terminal: true, sources: [(reading, .stdout)])
    )
  }
}

/// How a table process is wired: where input goes and what output is read from.
struct ProcessIO: Sendable {
  let input: SharedDescriptor
  let terminal: Bool
  let sources: [(Int32, OutputStream)]
}

/// A descriptor shared by writers and a closer: writes and the close take one lock, so input
/// after the close goes nowhere instead of into a file that reuses the number.
final class SharedDescriptor: Sendable {
  private let fd: Mutex<Int32>
  init(_ fd: Int32) { self.fd = Mutex(fd) }

  var isOpen: Bool { fd.withLock { $0 >= 0 } }

  /// Everything written; false when closed or the write failed.
  func write(_ bytes: [UInt8]) async -> Bool {
    await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        let ok = self.fd.withLock { fd in fd >= 0 && writeAll(fd: fd, bytes) }
        continuation.resume(returning: ok)
      }
    }
  }

  func resize(_ size: TerminalSize) {
    fd.withLock { fd in
      if fd >= 0 { _ = atelier_set_winsize(fd, UInt16(size.rows), UInt16(size.cols)) }
    }
  }

  func close() {
    fd.withLock { fd in
      if fd >= 0 { Glibc.close(fd) }
      fd = -1
    }
  }
}

/// A subscriber's view of a process: its events, and the token to give back what it wrote.
struct ProcessSubscription: Sendable {
  let events: AsyncStream<ProcessEventFrame>
  let token: Int
}
