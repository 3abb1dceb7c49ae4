import CAtelierSys
import Dispatch
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// How a child process ended.
public enum ExitStatus: Sendable, Equatable {
  case exited(Int32)
  case signaled(Int32)

  /// Shell convention: the exit code, or 128 + signal.
  public var code: Int32 {
    switch self {
    case .exited(let code): code
    case .signaled(let signal): 128 + signal
    }
  }

  init(waitStatus: Int32) {
    if atelier_wifsignaled(waitStatus) != 0 {
      self = .signaled(atelier_wtermsig(waitStatus))
    } else {
      self = .exited(atelier_wexitstatus(waitStatus))
    }
  }
}

/// The user a child runs as.
public struct ProcessCredentials: Sendable, Equatable {
  public var uid: UInt32
  public var gid: UInt32
  public var groups: [UInt32]
  public init(uid: UInt32, gid: UInt32, groups: [UInt32] = []) {
    self.uid = uid
    self.gid = gid
    self.groups = groups
  }
}

public struct SpawnOptions: Sendable {
  public var executable: String
  public var arguments: [String]
  public var environment: [String: String]
  public var workingDirectory: String?
  public var credentials: ProcessCredentials?
  /// Descriptors for 0, 1, 2; nil means /dev/null. They stay owned by the caller.
  public var stdin: Int32?
  public var stdout: Int32?
  public var stderr: Int32?
  /// Own session and process group, so the whole group can be signalled.
  public var newSession: Bool
  /// Make stdin (a terminal) the controlling terminal; needs `newSession`.
  public var controllingTerminal: Bool
  /// Descriptors the child gets as 3, 4, … (they stay owned by the caller).
  public var inheritedDescriptors: [Int32]

  public init(
    executable: String, arguments: [String] = [], environment: [String: String] = [:],
    workingDirectory: String? = nil, credentials: ProcessCredentials? = nil,
    stdin: Int32? = nil, stdout: Int32? = nil, stderr: Int32? = nil,
    newSession: Bool = true, controllingTerminal: Bool = false,
    inheritedDescriptors: [Int32] = []
  ) {
    self.executable = executable
    self.arguments = arguments
    self.environment = environment
    self.workingDirectory = workingDirectory
    self.credentials = credentials
    self.stdin = stdin
    self.stdout = stdout
    self.stderr = stderr
    self.newSession = newSession
    self.controllingTerminal = controllingTerminal
    self.inheritedDescriptors = inheritedDescriptors
  }
}

public struct SpawnError: Error, CustomStringConvertible, Sendable {
  public let executable: String
  public let errno: Int32
  public var description: String {
    "cannot run \(executable): \(String(cString: strerror(errno)))"
  }
}

/// Owns every child this process starts: one thread waits for any child (`waitpid(-1)`) and
/// hands each exit status to whoever awaits that pid. A single waiter is what lets the agent
/// run as PID 1: orphans re-parented to it are reaped and dropped, and no exit status of a
/// child we started is stolen by a second reaper.
public final class ProcessReaper: Sendable {
  public static let shared = ProcessReaper()

  private struct State {
    var known: Set<Int32> = []
    var finished: [Int32: ExitStatus] = [:]
    var waiters: [Int32: [CheckedContinuation<ExitStatus, Never>]] = [:]
    var threadStarted = false
  }

  private let state = Mutex(State())
  private let childrenAppeared = DispatchSemaphore(value: 0)

  private init() {}

  /// Starts a child. Throws `SpawnError` when it cannot be executed (nothing is left running).
  public func spawn(_ options: SpawnOptions) throws -> Int32 {
    // Search the child's PATH (not ours: execvpe would use the parent's environment).
    let executable = try Self.resolve(options.executable, path: options.environment["PATH"])
    let argv = [options.executable] + options.arguments
    let envp = options.environment.map { "\($0.key)=\($0.value)" }
    var execErrno: Int32 = 0
    let pid: Int32 = try withCStringArray(argv) { argvPointer in
      try withCStringArray(envp) { envPointer in
        let groups = options.credentials?.groups ?? []
        let inherited = options.inheritedDescriptors
        return try inherited.withUnsafeBufferPointer { inheritPointer in
          try groups.withUnsafeBufferPointer { groupPointer in
            try state.withLock { state -> Int32 in
              let pid = withOptionalCString(options.workingDirectory) { cwd in
                executable.withCString { path in
                  var raw = atelier_spawn_options(
                    path: path, argv: argvPointer, envp: envPointer, cwd: cwd,
                    uid: options.credentials.map { Int32(bitPattern: $0.uid) } ?? -1,
                    gid: options.credentials.map { Int32(bitPattern: $0.gid) } ?? -1,
                    groups: groupPointer.baseAddress, ngroups: Int32(groups.count),
                    stdin_fd: options.stdin ?? -1, stdout_fd: options.stdout ?? -1,
                    stderr_fd: options.stderr ?? -1,
                    new_session: options.newSession ? 1 : 0,
                    controlling_tty: options.controllingTerminal ? 1 : 0,
                    inherit_fds: inheritPointer.baseAddress, ninherit: Int32(inherited.count))
                  return atelier_spawn(&raw, &execErrno)
                }
              }
              if pid < 0 { throw SpawnError(executable: options.executable, errno: errno) }
              state.known.insert(pid)
              if !state.threadStarted {
                state.threadStarted = true
                startReaperThread()
              }
              return pid
            }
          }
        }
      }
    }
    childrenAppeared.signal()
    if execErrno != 0 {
      // The child exits with 127 at once; collect it so nothing is left as a zombie.
      Task { _ = await self.waitForExit(pid) }
      throw SpawnError(executable: options.executable, errno: execErrno)
    }
    return pid
  }

  static let defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

  /// The file `name` runs: itself when it has a slash, else the first match in `path`.
  static func resolve(_ name: String, path: String?) throws -> String {
    if name.contains("/") { return name }
    for directory in (path ?? defaultPath).split(separator: ":") {
      let candidate = "\(directory)/\(name)"
      if access(candidate, X_OK) == 0 { return candidate }
    }
    throw SpawnError(executable: name, errno: ENOENT)
  }

  /// Become the reaper of orphaned descendants too (daemonized VM processes), and start
  /// reaping now rather than at the first spawn.
  public func adoptOrphans() {
    _ = atelier_set_child_subreaper()
    state.withLock { state in
      if !state.threadStarted {
        state.threadStarted = true
        startReaperThread()
      }
    }
    childrenAppeared.signal()
  }

  /// Waits until the child `pid` (started by `spawn`) exits.
  public func waitForExit(_ pid: Int32) async -> ExitStatus {
    await withCheckedContinuation { continuation in
      let ready: ExitStatus? = state.withLock { state in
        if let status = state.finished.removeValue(forKey: pid) {
          state.known.remove(pid)
          return status
        }
        state.waiters[pid, default: []].append(continuation)
        return nil
      }
      if let ready { continuation.resume(returning: ready) }
    }
  }

  /// Whether `pid` was started here and has not been collected by `waitForExit` yet.
  public func isRunning(_ pid: Int32) -> Bool {
    state.withLock { $0.known.contains(pid) && $0.finished[pid] == nil }
  }

  private func startReaperThread() {
    let thread = OSThread { [self] in self.reapLoop() }
    thread.start()
  }

  private func reapLoop() {
    while true {
      var status: Int32 = 0
      let pid = waitpid(-1, &status, 0)
      if pid > 0 {
        deliver(pid: pid, status: ExitStatus(waitStatus: status))
      } else if errno == ECHILD {
        // Adopted orphans appear without a spawn: look again at least every second.
        _ = childrenAppeared.wait(timeout: .now() + 1)
      }
    }
  }

  private func deliver(pid: Int32, status: ExitStatus) {
    let waiters: [CheckedContinuation<ExitStatus, Never>] = state.withLock { state in
      guard state.known.contains(pid) else { return [] }  // an orphan re-parented to us
      if let waiting = state.waiters.removeValue(forKey: pid) {
        state.known.remove(pid)
        return waiting
      }
      state.finished[pid] = status
      return []
    }
    for waiter in waiters { waiter.resume(returning: status) }
  }
}

/// A plain pthread: the reaper blocks in `waitpid` for its whole life and must not occupy a
/// thread of Swift's cooperative pool or Dispatch's.
public final class OSThread: @unchecked Sendable {
  private let body: @Sendable () -> Void
  public init(_ body: @escaping @Sendable () -> Void) { self.body = body }

  public func start() {
    let box = Unmanaged.passRetained(self)
    var handle = pthread_t()
    pthread_create(
      &handle, nil,
      { raw in
        let thread = Unmanaged<OSThread>.fromOpaque(raw!).takeRetainedValue()
        thread.body()
        return nil
      }, box.toOpaque())
    pthread_detach(handle)
  }
}

func withCStringArray<R>(
  _ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) throws -> R
) rethrows -> R {
  let pointers = strings.map { strdup($0) } + [nil]
  defer { pointers.forEach { free($0) } }
  return try pointers.withUnsafeBufferPointer { try body($0.baseAddress!) }
}

func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
  guard let string else { return body(nil) }
  return string.withCString { body($0) }
}
