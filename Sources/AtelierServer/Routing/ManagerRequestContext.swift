import AtelierCore
import Hummingbird
import HummingbirdWebSocket

/// Who a request comes from, once the authentication middleware has run.
public struct Principal: Sendable, Equatable {
  /// The API token's id (never the token itself).
  public var tokenId: String
  public var name: String
}

/// The manager's request context: HTTP and WebSocket routes share one router, so one context.
public struct ManagerRequestContext: RequestContext, WebSocketRequestContext {
  public var coreContext: CoreRequestContextStorage
  public let webSocket: WebSocketHandlerReference<Self>
  /// Set by `AuthenticationMiddleware` on every route that needs a token.
  public var principal: Principal?
  /// Set by `RequestIdMiddleware`; in every log line of the request and in `X-Request-Id`.
  public var requestId = ""

  public init(source: Source) {
    coreContext = .init(source: source)
    webSocket = .init()
  }
}
