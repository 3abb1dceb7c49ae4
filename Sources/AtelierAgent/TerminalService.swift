import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import CAtelierSys
import HummingbirdWebSocket
import Logging
import NIOCore
import Synchronization

#if canImport(Dispatch)
  import Dispatch
#endif

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// The master side of a pseudo-terminal, shared by the reader thread and every client.
/// Writes and the close take the same lock, so input after the shell exited goes nowhere
/// instead of into whatever file later reuses the descriptor's number.
final class PTYMaster: Sendable {
  private let fd: Mutex<Int32>

  init(_ fd: Int32) { self.fd = Mutex(fd) }

  /// The descriptor to read from (only the reader thread reads, and it closes it after).
  var readDescriptor: Int32 { fd.withLock { $0 } }

  /// Writes everything; false once the terminal is closed (or the write failed).
  func write(_ bytes: [UInt8]) async -> Bool {
    await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        let ok = self.fd.withLock { fd in fd >= 0 && writeAll(fd: fd, bytes) }
        continuation.resume(returning: ok)
      }
    }
  }

  func resize(rows: UInt16, cols: UInt16) {
    fd.withLock { fd in if fd >= 0 { _ = atelier_set_winsize(fd, rows, cols) } }
  }

  func close() {
    fd.withLock { fd in
      if fd >= 0 { Glibc.close(fd) }
      fd = -1
    }
  }
}

/// One shell on a pseudo-terminal. Output is kept in a bounded replay buffer and fanned out to
/// every attached client; the session ends when its shell exits. Each client has at most
/// `clientQueueLimit` bytes queued: while one is full the terminal is not read (the shell
/// waits, as on a slow terminal); a client that takes nothing for `stallTimeout` is cut off
/// (it may attach again and get the replay), so a stalled reader costs bounded memory and
/// holds the others up once, briefly.
final class TerminalSessionState: Sendable {
  enum Event: Sendable {
    case output([UInt8])
    case exit(Int32)
    /// The client fell too far behind and was detached.
    case overflow
  }

  struct Client {
    var continuation: AsyncStream<Event>.Continuation
    /// Bytes yielded to it and not yet written out.
    var pending = 0
  }

  struct Shared {
    var replay: [UInt8] = []
    var clients: [Int: Client] = [:]
    var nextClient = 0
    var cols: Int
    var rows: Int
    var exitCode: Int32?
  }

  static let replayLimit = 256 << 10
  static let defaultClientQueueLimit = 4 << 20
  static let defaultStallTimeout: Duration = .seconds(10)

  let id: String
  let title: String
  let command: [String]
  let user: String
  let pid: Int32
  let master: PTYMaster
  let createdAt: Double
  let clientQueueLimit: Int
  let stallTimeout: Duration
  private let shared: Mutex<Shared>

  init(
    id: String, title: String, command: [String], user: String, pid: Int32, master: Int32,
    cols: Int, rows: Int, clientQueueLimit: Int = TerminalSessionState.defaultClientQueueLimit,
    stallTimeout: Duration = TerminalSessionState.defaultStallTimeout
  ) {
    self.id = id
    self.title = title
    self.command = command
    self.user = user
    self.pid = pid
    self.master = PTYMaster(master)
    self.createdAt = Date().timeIntervalSince1970
    self.clientQueueLimit = clientQueueLimit
    self.stallTimeout = stallTimeout
    self.shared = Mutex(Shared(cols: cols, rows: rows))
  }

  var info: TerminalSession {
    shared.withLock {
      TerminalSession(
        id: id, title: title, command: command, user: user, pid: pid, cols: $0.cols, rows: $0.rows,
        createdAt: createdAt, clients: $0.clients.count)
    }
  }

  /// Registers a client: what it missed (the replay) and the stream of what comes next.
  func attach() -> (replay: [UInt8], events: AsyncStream<Event>, token: Int) {
    let (stream, continuation) = AsyncStream.makeStream(of: Event.self)
    return shared.withLock { state in
      let token = state.nextClient
      state.nextClient += 1
      if let code = state.exitCode {
        continuation.yield(.exit(code))
        continuation.finish()
      } else {
        state.clients[token] = Client(continuation: continuation)
      }
      return (state.replay, stream, token)
    }
  }

  func detach(_ token: Int) {
    shared.withLock { $0.clients.removeValue(forKey: token)?.continuation.finish() }
  }

  /// A client wrote `count` bytes of output out.
  func consumed(_ token: Int, _ count: Int) {
    shared.withLock { $0.clients[token]?.pending -= count }
  }

  func resize(cols: Int, rows: Int) {
    guard (1...1000).contains(cols), (1...1000).contains(rows) else { return }
    shared.withLock {
      $0.cols = cols
      $0.rows = rows
    }
    master.resize(rows: UInt16(rows), cols: UInt16(cols))
  }

  /// Input for the shell; dropped (false) once the terminal is closed.
  @discardableResult
  func write(_ bytes: [UInt8]) async -> Bool {
    await master.write(bytes)
  }

  /// Fans a chunk of output out to the clients: first waits (on the reader's own thread) for
  /// room in every client's queue, then cuts off those that made none in `stallTimeout`.
  func deliver(_ chunk: [UInt8]) {
    let deadline = ContinuousClock.now + stallTimeout
    while ContinuousClock.now < deadline {
      let full = shared.withLock { state in
        state.clients.values.contains {
          $0.pending > 0 && $0.pending + chunk.count > clientQueueLimit
        }
      }
      if !full { break }
      usleep(2000)
    }
    shared.withLock { state in
      state.replay += chunk
      if state.replay.count > Self.replayLimit {
        state.replay.removeFirst(state.replay.count - Self.replayLimit)
      }
      for (token, client) in state.clients {
        if client.pending > 0 && client.pending + chunk.count > clientQueueLimit {
          client.continuation.yield(.overflow)
          client.continuation.finish()
          state.clients[token] = nil
        } else {
          state.clients[token]?.pending += chunk.count
          client.continuation.yield(.output(chunk))
        }
      }
    }
  }

  /// Reads the terminal until the shell side closes (on its own thread: a PTY read blocks).
  func startReading(onExit: @escaping @Sendable () -> Void) {
    OSThread { [self] in
      let fd = master.readDescriptor
      var buffer = [UInt8](repeating: 0, count: 65536)
      while true {
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        deliver(Array(buffer[0..<count]))
      }
      Task {
        let status = await ProcessReaper.shared.waitForExit(self.pid)
        self.master.close()
        self.shared.withLock { state in
          state.exitCode = status.code
          for client in state.clients.values {
            client.continuation.yield(.exit(status.code))
            client.continuation.finish()
          }
          state.clients = [:]
        }
        onExit()
      }
    }.start()
  }
}

/// The terminal sessions of this guest.
final class TerminalService: Sendable {
  private let sessions = Mutex<[String: TerminalSessionState]>([:])
  let logger: Logger
  /// How long a terminal waits for a client that takes none of its output.
  let stallTimeout: Duration

  init(logger: Logger, stallTimeout: Duration = TerminalSessionState.defaultStallTimeout) {
    self.logger = logger
    self.stallTimeout = stallTimeout
  }

  func list() -> [TerminalSession] {
    sessions.withLock { Array($0.values) }.map(\.info).sorted { $0.createdAt < $1.createdAt }
  }

  func session(_ id: String) throws -> TerminalSessionState {
    guard let session = sessions.withLock({ $0[id] }) else {
      throw APIError.notFound("no terminal session \(id)")
    }
    return session
  }

  func create(_ request: TerminalCreateRequest) throws -> TerminalSession {
    guard let user = GuestUser.resolve(request.user) else {
      throw APIError.notFound("unknown user \(request.user ?? "")")
    }
    let hasBash = access("/bin/bash", X_OK) == 0
    let command = request.command ?? (hasBash ? ["/bin/bash", "-l"] : ["/bin/sh", "-l"])
    guard let executable = command.first, !executable.isEmpty else {
      throw APIError.badRequest("command is empty")
    }
    let cols = request.cols ?? 80
    let rows = request.rows ?? 24
    guard (1...1000).contains(cols), (1...1000).contains(rows) else {
      throw APIError.badRequest("cols and rows must be between 1 and 1000")
    }
    let cwd =
      request.cwd
      ?? (directoryExists("\(user.home)/workspace") ? "\(user.home)/workspace" : user.home)
    var master: Int32 = -1
    var slave: Int32 = -1
    guard atelier_openpty(&master, &slave, UInt16(rows), UInt16(cols)) == 0 else {
      throw APIError.internalError(
        "cannot open a pseudo-terminal: \(String(cString: strerror(errno)))")
    }
    defer { close(slave) }
    let pid: Int32
    do {
      pid = try ProcessReaper.shared.spawn(
        SpawnOptions(
          executable: executable, arguments: Array(command.dropFirst()),
          environment: user.environment(extra: ["TERM": "xterm-256color"]),
          workingDirectory: directoryExists(cwd) ? cwd : "/",
          credentials: user.uid == getuid() ? nil : user.credentials, stdin: slave, stdout: slave,
          stderr: slave, newSession: true, controllingTerminal: true))
    } catch let error as SpawnError where error.errno == ENOENT {
      // Well formed, naming a program this guest does not have.
      close(master)
      throw APIError.notFound("no program \(executable) in this guest")
    } catch {
      close(master)
      throw APIError.badRequest("cannot start \(executable): \(error)")
    }
    let id =
      "t" + String((0..<10).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
    let session = TerminalSessionState(
      id: id, title: request.title ?? URL(fileURLWithPath: executable).lastPathComponent,
      command: command, user: user.name, pid: pid, master: master, cols: cols, rows: rows,
      stallTimeout: stallTimeout)
    sessions.withLock { $0[id] = session }
    session.startReading { [weak self] in
      _ = self?.sessions.withLock { $0.removeValue(forKey: id) }
    }
    logger.info("terminal \(id) started", metadata: ["pid": "\(pid)", "user": "\(user.name)"])
    return session.info
  }

  /// Hangs up the shell (SIGHUP to its group), then kills it if it lingers.
  func delete(_ id: String) async throws {
    let session = try session(id)
    kill(-session.pid, SIGHUP)
    let deadline = ContinuousClock.now + .seconds(2)
    while ProcessReaper.shared.isRunning(session.pid) && ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(20))
    }
    if ProcessReaper.shared.isRunning(session.pid) { kill(-session.pid, SIGKILL) }
    _ = sessions.withLock { $0.removeValue(forKey: id) }
  }

  /// A WebSocket client: the replay first, then live output; input and resizes from it.
  func serve(_ id: String, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter)
    async throws
  {
    guard let session = sessions.withLock({ $0[id] }) else {
      try await outbound.close(.init(codeNumber: 4004), reason: "no such session")
      return
    }
    let (replay, events, token) = session.attach()
    defer { session.detach(token) }
    if !replay.isEmpty { try await outbound.write(.binary(ByteBuffer(bytes: replay))) }
    let forward = Task {
      for await event in events {
        switch event {
        case .output(let bytes):
          try? await outbound.write(.binary(ByteBuffer(bytes: bytes)))
          session.consumed(token, bytes.count)
        case .exit(let code):
          let frame = TerminalControlFrame(type: .exit, exitCode: code)
          if let data = try? JSONEncoder().encode(frame) {
            try? await outbound.write(.text(String(decoding: data, as: UTF8.self)))
          }
          try? await outbound.close(.normalClosure, reason: "shell exited")
        case .overflow:
          try? await outbound.close(.init(codeNumber: 4008), reason: "output not read in time")
        }
      }
    }
    for try await message in inbound.messages(maxSize: 1 << 20) {
      switch message {
      case .binary(let buffer):
        await session.write(Array(buffer.readableBytesView))
      case .text(let text):
        if let data = Optional(Data(text.utf8)),
          let frame = try? JSONDecoder().decode(TerminalControlFrame.self, from: data)
        {
          switch frame.type {
          case .resize: session.resize(cols: frame.cols ?? 80, rows: frame.rows ?? 24)
          case .input: await session.write(Array((frame.data ?? "").utf8))
          case .exit: break
          }
        } else {
          await session.write(Array(text.utf8))
        }
      }
    }
    forward.cancel()
  }
}
