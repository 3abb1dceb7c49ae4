import AtelierCore
import AtelierStore
import Hummingbird
import HummingbirdWebSocket

/// Who a request comes from, once the authentication middleware has run.
public struct Principal: Sendable, Equatable {
  /// How the request proved who it is.
  public enum Credential: Sendable, Equatable {
    /// An API key (its id, never the key).
    case apiKey(id: String)
    /// A browser session (its id; writes also need the session's CSRF token).
    case session(id: String)
  }
  public var userId: String
  public var userName: String
  public var role: UserRole
  public var credential: Credential

  public var isAdmin: Bool { role == .admin }
  /// What the orchestrator needs to know about the caller.
  public var requester: Requester { Requester(userId: userId, isAdmin: isAdmin) }
}

/// The manager's request context: HTTP and WebSocket routes share one router, so one context.
public struct ManagerRequestContext: RequestContext, WebSocketRequestContext {
  public var coreContext: CoreRequestContextStorage
  public let webSocket: WebSocketHandlerReference<Self>
  /// Set by `AuthenticationMiddleware` on every route that needs a token.
  public var principal: Principal?
  /// Set by `WebSocketAuthenticationMiddleware` instead of throwing: a WebSocket route closes
  /// with its code (`WebSocketRefusal`) once upgraded.
  public var authenticationFailure: AtelierError?
  /// Set by `RequestIdMiddleware`; in every log line of the request and in `X-Request-Id`.
  public var requestId = ""

  public init(source: Source) {
    coreContext = .init(source: source)
    webSocket = .init()
  }
}
