import AtelierAgentAPI
import AtelierCore
import Foundation
import HummingbirdWSClient
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// The manager's end of one guest-service tunnel: a WebSocket to the agent that waits idle
/// until a guest process connects to a guest service, then carries that connection to the
/// host service the configuration names for its port, and nowhere else.
public enum AgentTunnel {
  public enum Outcome: Sendable, Equatable {
    /// The agent closed it before using it.
    case closedIdle
    /// Carried a connection to the host service of `port`.
    case carried(port: Int)
    /// The agent asked for a port with no host service, or the service did not answer.
    case refused(port: Int, reason: String)
  }

  typealias HostChannel = NIOAsyncChannel<ByteBuffer, ByteBuffer>

  /// Runs one tunnel to completion. `opened` is called as soon as the agent claims it, so the
  /// caller can open the next idle one. Throws when the agent cannot be reached.
  public static func run(
    agent: AgentClient, services: [Int: GuestService], logger: Logger,
    connected: @escaping @Sendable () -> Void = {}, opened: @escaping @Sendable (Int) -> Void
  ) async throws -> Outcome {
    let url = try agent.baseURL(scheme: "ws") + "/guest-services/tunnel"
    var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20)
    if let header = agent.authorization { configuration.additionalHeaders[.authorization] = header }
    let outcome = Shared(Outcome.closedIdle)
    _ = try await WebSocketClient.connect(
      url: url, configuration: configuration, logger: logger
    ) { inbound, outbound, _ in
      connected()
      var messages = inbound.messages(maxSize: 1 << 20).makeAsyncIterator()
      guard let first = try await messages.next() else { return }
      guard case .text(let text) = first, let frame = decode(text), frame.type == .open,
        let port = frame.port
      else { return }
      opened(port)
      // Only the configured address: the guest names a port, never where to go.
      guard let service = services[port] else {
        outcome.withLock { $0 = .refused(port: port, reason: "no host service for this port") }
        return
      }
      let host: HostChannel
      do {
        host = try await dial(service)
      } catch {
        outcome.withLock { $0 = .refused(port: port, reason: "\(error)") }
        return
      }
      outcome.withLock { $0 = .carried(port: port) }
      try await host.executeThenClose { hostInbound, hostOutbound in
        try await splice(
          messages: &messages, outbound: outbound, hostInbound: hostInbound,
          hostOutbound: hostOutbound)
      }
    }
    return outcome.withLock { $0 }
  }

  /// Bytes both ways until both directions ended (each with `eof`), then the tunnel closes.
  static func splice(
    messages: inout WebSocketInboundMessageStream.AsyncIterator, outbound: WebSocketOutboundWriter,
    hostInbound: NIOAsyncChannelInboundStream<ByteBuffer>,
    hostOutbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
  ) async throws {
    let ended = Shared((host: false, guest: false))
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask {
        do {
          for try await buffer in hostInbound { try await outbound.write(.binary(buffer)) }
          try await outbound.write(.text(encode(TunnelFrame(type: .eof))))
        } catch {
          try? await outbound.close(.goingAway, reason: nil)
          return
        }
        let both = ended.withLock {
          $0.host = true
          return $0.guest
        }
        if both { try? await outbound.close(.normalClosure, reason: nil) }
      }
      while let message = try await messages.next() {
        switch message {
        case .binary(let buffer):
          try await hostOutbound.write(buffer)
        case .text(let text):
          guard decode(text)?.type == .eof else { throw TunnelProtocolError() }
          hostOutbound.finish()  // half-close: the host service reads EOF
          let both = ended.withLock {
            $0.guest = true
            return $0.host
          }
          if both { try? await outbound.close(.normalClosure, reason: nil) }
        }
      }
      group.cancelAll()
    }
  }

  static func dial(_ service: GuestService) async throws -> HostChannel {
    try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
      .channelOption(.allowRemoteHalfClosure, value: true)
      .connectTimeout(.seconds(5))
      .connect(host: service.hostAddress, port: service.hostPort) { channel in
        channel.eventLoop.makeCompletedFuture {
          try HostChannel(
            wrappingChannelSynchronously: channel,
            configuration: .init(isOutboundHalfClosureEnabled: true))
        }
      }
  }

  static func decode(_ text: String) -> TunnelFrame? {
    try? JSONDecoder().decode(TunnelFrame.self, from: Data(text.utf8))
  }

  static func encode(_ frame: TunnelFrame) -> String {
    String(decoding: (try? JSONEncoder().encode(frame)) ?? Data(), as: UTF8.self)
  }
}

/// A tunnel frame that is neither bytes nor `eof` after `open`.
struct TunnelProtocolError: Error, CustomStringConvertible {
  var description: String { "unexpected frame on a guest-service tunnel" }
}

/// A value shared between the tasks of one tunnel.
final class Shared<Value: Sendable>: Sendable {
  private let value: Mutex<Value>
  init(_ value: Value) { self.value = Mutex(value) }
  func withLock<R: Sendable>(_ body: (inout Value) -> R) -> R { value.withLock { body(&$0) } }
}
