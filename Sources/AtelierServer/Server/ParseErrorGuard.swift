import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1

/// HTTP/1.1 with WebSocket upgrades, where a connection whose first request cannot be parsed
/// (a NUL in a header, say) is closed. Hummingbird's upgrade negotiation leaves such a
/// connection open and silent for good: any peer could hold connections forever with one bad
/// byte. After the first request, Hummingbird's own handling applies (a 400, then close).
struct ParseErrorGuardedChannel: ServerChildChannel {
  typealias Value = HTTP1WebSocketUpgradeChannel.Value
  let inner: HTTP1WebSocketUpgradeChannel

  func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
    inner.setup(channel: channel, logger: logger).flatMapThrowing { value in
      try channel.pipeline.syncOperations.addHandler(FirstRequestParseErrorCloser())
      return value
    }
  }

  func handle(value: Value, logger: Logger) async {
    await inner.handle(value: value, logger: logger)
  }
}

/// Closes the connection on a parse error until the first request is through negotiation
/// (the upgrade handler before it passes nothing on until then); afterwards errors go on to
/// Hummingbird. Event-loop bound, as every channel handler.
final class FirstRequestParseErrorCloser: ChannelInboundHandler, RemovableChannelHandler {
  typealias InboundIn = NIOAny
  private var negotiated = false

  func channelRead(context: ChannelHandlerContext, data: NIOAny) {
    negotiated = true
    context.fireChannelRead(data)
  }

  func errorCaught(context: ChannelHandlerContext, error: any Error) {
    if !negotiated, error is HTTPParserError {
      context.close(promise: nil)
      return
    }
    context.fireErrorCaught(error)
  }
}

extension HTTPServerBuilder {
  /// `.http1WebSocketUpgrade(webSocketRouter:configuration:)` with the first request's parse
  /// errors closing the connection.
  static func guardedHTTP1WebSocketUpgrade<Responder: HTTPResponderBuilder>(
    webSocketRouter: Responder, configuration: WebSocketServerConfiguration
  ) -> HTTPServerBuilder where Responder.Responder.Context: WebSocketRequestContext {
    let webSocketResponder = webSocketRouter.buildResponder()
    return .init { responder in
      ParseErrorGuardedChannel(
        inner: HTTP1WebSocketUpgradeChannel(
          responder: responder, webSocketResponder: webSocketResponder,
          configuration: .init(ws: configuration)))
    }
  }
}
