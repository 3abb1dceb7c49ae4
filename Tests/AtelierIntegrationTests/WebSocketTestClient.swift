import Foundation
import HummingbirdWSClient
import Logging
import NIOCore

/// A WebSocket a test drives: it sends frames and waits for what arrives.
final class WebSocketTestConnection: @unchecked Sendable {
  let outbound: WebSocketOutboundWriter
  private let lock = NSLock()
  private var receivedTexts: [String] = []
  private var receivedBytes: [UInt8] = []
  private var closedFlag = false

  init(outbound: WebSocketOutboundWriter) { self.outbound = outbound }

  var texts: [String] { lock.withLock { receivedTexts } }
  var bytes: [UInt8] { lock.withLock { receivedBytes } }
  var isClosed: Bool { lock.withLock { closedFlag } }

  func received(_ message: WebSocketMessage) {
    lock.withLock {
      switch message {
      case .text(let text): receivedTexts.append(text)
      case .binary(let buffer): receivedBytes += buffer.readableBytesView
      }
    }
  }

  func closed() { lock.withLock { closedFlag = true } }

  func send(text: String) async throws { try await outbound.write(.text(text)) }
  func send(bytes: [UInt8]) async throws {
    try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
  }
  func send(json: [String: Any]) async throws {
    try await send(
      text: String(decoding: try JSONSerialization.data(withJSONObject: json), as: UTF8.self))
  }

  /// The binary output so far, as text.
  var output: String { String(decoding: bytes, as: UTF8.self) }
  /// Text frames parsed as JSON objects.
  var frames: [[String: Any]] {
    texts.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
  }

  /// Waits until `condition` holds (checked every 20 ms); false on timeout.
  func wait(timeout: Duration = .seconds(20), until condition: (WebSocketTestConnection) -> Bool)
    async -> Bool
  {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      if condition(self) { return true }
      try? await Task.sleep(for: .milliseconds(20))
    }
    return condition(self)
  }
}

/// Connects to `url` with the token, runs `body`, then closes. A server that closes the
/// socket once the scenario is over (an exec that exited, a shell that ended) is expected:
/// what happens to the client after `body` returned is not a failure.
func withWebSocket(
  _ url: String, token: String,
  _ body: @escaping @Sendable (WebSocketTestConnection) async throws -> Void
) async throws {
  var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20)
  configuration.additionalHeaders[.authorization] = "Bearer \(token)"
  let finished = FinishedFlag()
  do {
    _ = try await WebSocketClient.connect(
      url: url, configuration: configuration, logger: Logger(label: "test.websocket")
    ) { inbound, outbound, _ in
      let connection = WebSocketTestConnection(outbound: outbound)
      let reader = Task {
        do {
          for try await message in inbound.messages(maxSize: 16 << 20) {
            connection.received(message)
          }
        } catch {}
        connection.closed()
      }
      defer { reader.cancel() }
      try await body(connection)
      finished.set()
      try? await outbound.close(.normalClosure, reason: nil)
    }
  } catch {
    if finished.isSet { return }
    throw error
  }
}

final class FinishedFlag: @unchecked Sendable {
  private let lock = NSLock()
  private var value = false
  func set() { lock.withLock { value = true } }
  var isSet: Bool { lock.withLock { value } }
}
