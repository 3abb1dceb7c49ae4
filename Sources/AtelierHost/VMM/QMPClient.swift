import CAtelierSys
import Dispatch
import Foundation

/// A QEMU Machine Protocol client over the VM's Unix socket. `execute` opens a connection,
/// negotiates capabilities, runs one command and closes (QMP allows several clients, and the
/// manager issues few commands); `session` runs several on one connection, which is what a
/// descriptor handed over with `getfd` or `add-fd` needs. Blocking socket I/O runs off the
/// cooperative pool.
public struct QMPClient: Sendable {
  public let socketPath: String
  public let timeout: Duration

  public init(socketPath: String, timeout: Duration = .seconds(30)) {
    self.socketPath = socketPath
    self.timeout = timeout
  }

  /// Runs `command` and returns its `return` value (JSON object), or throws with QMP's error.
  @discardableResult
  public func execute(_ command: String, arguments: [String: Any]? = nil) async throws -> Any {
    let box = UncheckedBox(arguments)
    return try await session { UncheckedBox(try $0.execute(command, arguments: box.value)) }.value
  }

  /// Runs `body` on one connection (on a thread of its own: its calls block).
  public func session<Result: Sendable>(_ body: @escaping @Sendable (QMPSession) throws -> Result)
    async throws -> Result
  {
    let path = socketPath
    let seconds = max(1, Int(timeout.components.seconds))
    let result: Swift.Result<Result, any Error> = await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        continuation.resume(
          returning: Swift.Result {
            let session = try QMPSession(path: path, timeoutSeconds: seconds)
            defer { session.close() }
            return try body(session)
          })
      }
    }
    return try result.get()
  }

  /// The run state (`running`, `paused`, `postmigrate`, `inmigrate`, …).
  public func status() async throws -> String {
    let answer = try await execute("query-status") as? [String: Any]
    return answer?["status"] as? String ?? ""
  }

  /// Polls `query-migrate` until the migration completes; throws if it fails.
  public func waitForMigration(timeout: Duration = .seconds(600)) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      let status = try await execute("query-migrate") as? [String: Any]
      switch status?["status"] as? String {
      case "completed": return
      case "failed", "cancelled":
        throw QMPError(
          "migration \(status?["status"] as? String ?? ""): \(status?["error-desc"] as? String ?? "")"
        )
      default: try await Task.sleep(for: .milliseconds(5))
      }
    }
    throw QMPError("migration did not finish within \(timeout)")
  }
}

/// A JSON value that crosses into the session's thread unchanged (it is never mutated).
struct UncheckedBox<Value>: @unchecked Sendable {
  let value: Value
  init(_ value: Value) { self.value = value }
}

/// One QMP connection, capabilities negotiated. Not thread-safe: one caller at a time.
public final class QMPSession {
  let fd: Int32
  var reader: LineReader

  init(path: String, timeoutSeconds: Int) throws {
    do { fd = try UnixSocket.connect(path) } catch { throw QMPError("\(error)") }
    UnixSocket.setTimeouts(fd, seconds: timeoutSeconds)
    reader = LineReader(fd: fd)
    guard reader.next() != nil else {
      Foundation.close(fd)
      throw QMPError("no QMP greeting")
    }
    do { _ = try execute("qmp_capabilities") } catch {
      Foundation.close(fd)
      throw error
    }
  }

  func close() { Foundation.close(fd) }

  /// Runs a command; with `passing`, the descriptor travels with it (SCM_RIGHTS), as `getfd`
  /// and `add-fd` take theirs. The caller keeps (and closes) its own copy.
  @discardableResult
  public func execute(
    _ command: String, arguments: [String: Any]? = nil, passing descriptor: Int32? = nil
  )
    throws -> Any
  {
    let request: [String: Any] =
      arguments.map { ["execute": command, "arguments": $0] } ?? ["execute": command]
    let payload = [UInt8](try JSONSerialization.data(withJSONObject: request)) + [10]
    if let descriptor {
      let sent = payload.withUnsafeBytes {
        atelier_send_with_fd(fd, $0.baseAddress, UInt($0.count), descriptor)
      }
      guard sent == payload.count else { throw QMPError("QMP write failed") }
    } else {
      guard UnixSocket.sendAll(fd, payload) else { throw QMPError("QMP write failed") }
    }
    // Skip asynchronous events until the answer to this command.
    while true {
      guard let line = reader.next() else { throw QMPError("QMP connection closed") }
      guard let object = try JSONSerialization.jsonObject(with: line) as? [String: Any] else {
        throw QMPError("unexpected QMP answer")
      }
      if object["event"] != nil { continue }
      if let error = object["error"] as? [String: Any] {
        throw QMPError("\(command): \(error["desc"] as? String ?? "error")")
      }
      return object["return"] ?? [:]
    }
  }
}

/// Reads newline-terminated lines from a socket. A line longer than `maxLine` ends the
/// reading: QEMU is the VM user's process, and a compromised one must not grow the root
/// manager's memory without bound.
struct LineReader {
  static let maxLine = 1 << 20
  let fd: Int32
  var buffer: [UInt8] = []

  mutating func next() -> Data? {
    while true {
      if let newline = buffer.firstIndex(of: 10) {
        let line = Data(buffer[..<newline])
        buffer.removeSubrange(...newline)
        return line
      }
      guard buffer.count <= Self.maxLine else { return nil }
      guard let chunk = UnixSocket.receive(fd), !chunk.isEmpty else { return nil }
      buffer += chunk
    }
  }
}

public struct QMPError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { "QMP: \(message)" }
}
