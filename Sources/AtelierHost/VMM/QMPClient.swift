import Dispatch
import Foundation

/// A QEMU Machine Protocol client over the VM's Unix socket. Each call opens a connection,
/// negotiates capabilities, runs one command and closes (QMP allows several clients, and
/// the manager issues few commands). Blocking socket I/O runs off the cooperative pool.
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
    let request: [String: Any] =
      arguments.map { ["execute": command, "arguments": $0] } ?? ["execute": command]
    let payload = try JSONSerialization.data(withJSONObject: request)
    let path = socketPath
    let seconds = Int(timeout.components.seconds)
    let result: Result<Data, QMPError> = await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        continuation.resume(
          returning: Self.roundTrip(path: path, payload: payload, timeoutSeconds: seconds))
      }
    }
    let line = try result.get()
    guard let object = try JSONSerialization.jsonObject(with: line) as? [String: Any] else {
      throw QMPError("unexpected QMP answer")
    }
    if let error = object["error"] as? [String: Any] {
      throw QMPError("\(command): \(error["desc"] as? String ?? "error")")
    }
    return object["return"] ?? [:]
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
      default: try await Task.sleep(for: .milliseconds(20))
      }
    }
    throw QMPError("migration did not finish within \(timeout)")
  }

  static func roundTrip(path: String, payload: Data, timeoutSeconds: Int) -> Result<Data, QMPError>
  {
    let fd: Int32
    do { fd = try UnixSocket.connect(path) } catch {
      return .failure(QMPError("\(error)"))
    }
    defer { close(fd) }
    UnixSocket.setTimeouts(fd, seconds: timeoutSeconds)
    var reader = LineReader(fd: fd)
    guard reader.next() != nil else { return .failure(QMPError("no QMP greeting")) }
    for message in [Data(#"{"execute":"qmp_capabilities"}"#.utf8), payload] {
      guard UnixSocket.sendAll(fd, [UInt8](message) + [10]) else {
        return .failure(QMPError("QMP write failed"))
      }
      // Skip asynchronous events until the answer to this command.
      while true {
        guard let line = reader.next() else { return .failure(QMPError("QMP connection closed")) }
        if line.range(of: Data(#""event""#.utf8)) != nil { continue }
        if message == payload { return .success(line) }
        break
      }
    }
    return .failure(QMPError("unreachable"))
  }
}

/// Reads newline-terminated lines from a socket.
struct LineReader {
  let fd: Int32
  var buffer: [UInt8] = []

  mutating func next() -> Data? {
    while true {
      if let newline = buffer.firstIndex(of: 10) {
        let line = Data(buffer[..<newline])
        buffer.removeSubrange(...newline)
        return line
      }
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
