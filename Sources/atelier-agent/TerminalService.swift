import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import CAtelierSys
import HummingbirdWebSocket
import Logging
import NIOCore
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// One shell on a pseudo-terminal. Output is kept in a bounded replay buffer and fanned out to
/// every attached client; the session ends when its shell exits.
final class TerminalSessionState: Sendable {
  enum Event: Sendable {
    case output([UInt8])
    case exit(Int32)
  }

  struct Shared {
    var replay: [UInt8] = []
    var clients: [Int: AsyncStream<Event>.Continuation] = [:]
    var nextClient = 0
    var cols: Int
    var rows: Int
    var exitCode: Int32?
  }

  static let replayLimit = 256 << 10

  let id: String
  let title: String
  let command: [String]
  let user: String
  let pid: Int32
  let master: Int32
  let createdAt: Double
  private let shared: Mutex<Shared>

  init(
    id: String, title: String, command: [String], user: String, pid: Int32, master: Int32,
    cols: Int, rows: Int
  ) {
    self.id = id
    self.title = title
    self.command = command
    self.user = user
    self.pid = pid
    self.master = master
    self.createdAt = Date().timeIntervalSince1970
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
    let (stream, continuation) = AsyncStream.makeStream(
      of: Event.self, bufferingPolicy: .bufferingNewest(4096))
    return shared.withLock { state in
      let token = state.nextClient
      state.nextClient += 1
      if let code = state.exitCode {
        continuation.yield(.exit(code))
        continuation.finish()
      } else {
        state.clients[token] = continuation
      }
      return (state.replay, stream, token)
    }
  }

  func detach(_ token: Int) {
    shared.withLock { $0.clients.removeValue(forKey: token)?.finish() }
  }

  func resize(cols: Int, rows: Int) {
    guard (1...1000).contains(cols), (1...1000).contains(rows) else { return }
    shared.withLock {
      $0.cols = cols
      $0.rows = rows
    }
    _ = atelier_set_winsize(master, UInt16(rows), UInt16(cols))
  }

  func write(_ bytes: [UInt8]) async {
    _ = await BlockingIO.write(master, bytes)
  }

  /// Reads the terminal until the shell side closes (on its own thread: a PTY read blocks).
  func startReading(onExit: @escaping @Sendable () -> Void) {
    OSThread { [self] in
      var buffer = [UInt8](repeating: 0, count: 65536)
      while true {
        let count = buffer.withUnsafeMutableBytes { read(self.master, $0.baseAddress, $0.count) }
        if count < 0 && errno == EINTR { continue }
        if count <= 0 { break }
        let chunk = Array(buffer[0..<count])
        shared.withLock { state in
          state.replay += chunk
          if state.replay.count > Self.replayLimit {
            state.replay.removeFirst(state.replay.count - Self.replayLimit)
          }
          for client in state.clients.values { client.yield(.output(chunk)) }
        }
      }
      Task {
        let status = await ProcessReaper.shared.waitForExit(self.pid)
        close(self.master)
        self.shared.withLock { state in
          state.exitCode = status.code
          for client in state.clients.values {
            client.yield(.exit(status.code))
            client.finish()
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

  init(logger: Logger) { self.logger = logger }

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
      throw APIError.badRequest("unknown user \(request.user ?? "")")
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
    } catch {
      close(master)
      throw APIError.badRequest("cannot start \(executable): \(error)")
    }
    let id =
      "t" + String((0..<10).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
    let session = TerminalSessionState(
      id: id, title: request.title ?? URL(fileURLWithPath: executable).lastPathComponent,
      command: command, user: user.name, pid: pid, master: master, cols: cols, rows: rows)
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
        case .exit(let code):
          let frame = TerminalControlFrame(type: .exit, exitCode: code)
          if let data = try? JSONEncoder().encode(frame) {
            try? await outbound.write(.text(String(decoding: data, as: UTF8.self)))
          }
          try? await outbound.close(.normalClosure, reason: "shell exited")
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
