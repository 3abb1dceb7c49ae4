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

  /// The VM's run state (`running`, `paused`, `inmigrate`, `postmigrate`…).
  public func status() async throws -> String {
    let status = try await execute("query-status") as? [String: Any]
    return status?["status"] as? String ?? "unknown"
  }

  static func roundTrip(path: String, payload: Data, timeoutSeconds: Int) -> Result<Data, QMPError>
  {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return .failure(QMPError("socket: \(String(cString: strerror(errno)))")) }
    defer { close(fd) }
    var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let pathBytes = Array(path.utf8)
    guard pathBytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      return .failure(QMPError("socket path too long: \(path)"))
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: pathBytes)
      raw[pathBytes.count] = 0
    }
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard connected == 0 else {
      return .failure(QMPError("cannot connect to \(path): \(String(cString: strerror(errno)))"))
    }
    var reader = LineReader(fd: fd)
    guard reader.next() != nil else { return .failure(QMPError("no QMP greeting")) }
    for message in [Data(#"{"execute":"qmp_capabilities"}"#.utf8), payload] {
      let bytes = [UInt8](message) + [10]
      guard
        bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) })
          == bytes.count
      else { return .failure(QMPError("QMP write failed")) }
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
      var chunk = [UInt8](repeating: 0, count: 65536)
      let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if count < 0 && errno == EINTR { continue }
      guard count > 0 else { return nil }
      buffer += chunk[0..<count]
    }
  }
}

public struct QMPError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { "QMP: \(message)" }
}
