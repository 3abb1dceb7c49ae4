import AtelierCore

/// How a WebSocket route says no once upgraded (a browser cannot read the status of a refused
/// upgrade, only a close code): 4001 not authenticated, 4003 not allowed (another user's
/// sandbox, a cookie from another origin), 4004 no such sandbox or not running; anything else
/// is 1011 (the server's fault).
struct WebSocketRefusal: Sendable, Equatable {
  var code: UInt16
  var reason: String

  static let unauthenticated: UInt16 = 4001
  static let forbidden: UInt16 = 4003
  static let unavailable: UInt16 = 4004
  static let serverError: UInt16 = 1011

  init(code: UInt16, reason: String) {
    self.code = code
    self.reason = reason
  }

  init(_ error: any Error) {
    guard let error = error as? AtelierError else {
      self.init(code: Self.serverError, reason: "internal error")
      return
    }
    switch error.code {
    case .unauthorized: self.init(code: Self.unauthenticated, reason: error.message)
    case .forbidden: self.init(code: Self.forbidden, reason: error.message)
    case .notFound, .sandboxNotRunning, .conflict:
      self.init(code: Self.unavailable, reason: error.message)
    default: self.init(code: Self.serverError, reason: "internal error")
    }
  }

  /// Close reasons must fit a control frame (125 bytes with the code).
  var trimmedReason: String {
    var text = reason
    while text.utf8.count > 120 { text.removeLast() }
    return text
  }
}
