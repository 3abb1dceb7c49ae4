/// The one error type of Atelier's APIs, on the manager and in the agent: a code that maps to
/// an HTTP status, a message safe to show to the caller, and a cause that goes to the log only.
public struct AtelierError: Error, Sendable, CustomStringConvertible {
  public enum Code: String, Sendable, Codable, CaseIterable {
    case notFound = "NOT_FOUND"
    case validation = "VALIDATION_ERROR"
    case conflict = "CONFLICT"
    case sandboxNotRunning = "SANDBOX_NOT_RUNNING"
    case resourceExhausted = "RESOURCE_EXHAUSTED"
    case unauthorized = "UNAUTHORIZED"
    case forbidden = "FORBIDDEN"
    case methodNotAllowed = "METHOD_NOT_ALLOWED"
    case bootFailed = "BOOT_FAILED"
    case unavailable = "UNAVAILABLE"
    case `internal` = "INTERNAL_ERROR"

    public var httpStatus: Int {
      switch self {
      case .notFound: 404
      case .validation: 400
      case .conflict, .sandboxNotRunning: 409
      case .resourceExhausted: 429
      case .unauthorized: 401
      case .forbidden: 403
      case .methodNotAllowed: 405
      case .bootFailed, .unavailable: 503
      case .internal: 500
      }
    }

    /// The code an HTTP status means when an answer carries no code of ours.
    public init(httpStatus: Int) {
      self =
        switch httpStatus {
        case 401: .unauthorized
        case 403: .forbidden
        case 404: .notFound
        case 405: .methodNotAllowed
        case 409: .conflict
        case 429: .resourceExhausted
        case 400..<500: .validation
        case 503: .unavailable
        default: .internal
        }
    }
  }

  public var code: Code
  /// Safe for the caller: no paths of the host, no internal detail.
  public var message: String
  /// What went wrong underneath, for the log only (never in a response body).
  public var cause: (any Error & Sendable)?

  public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
    self.code = code
    self.message = message
    self.cause = cause
  }

  public var description: String {
    "\(code.rawValue): \(message)" + (cause.map { " (cause: \($0))" } ?? "")
  }

  public var body: ErrorBody { ErrorBody(error: code.rawValue, message: message) }

  public static func notFound(_ message: String) -> Self { .init(.notFound, message) }
  public static func validation(_ message: String) -> Self { .init(.validation, message) }
  public static func conflict(_ message: String) -> Self { .init(.conflict, message) }
  public static func unauthorized(_ message: String) -> Self { .init(.unauthorized, message) }
  public static func forbidden(_ message: String) -> Self { .init(.forbidden, message) }
  /// A failure whose detail must stay in the log: the caller gets `message` only.
  public static func `internal`(_ message: String, cause: (any Error & Sendable)? = nil) -> Self {
    .init(.internal, message, cause: cause)
  }
}

extension AtelierError: Equatable {
  /// Two errors are the same answer when their code and message are (causes are log detail).
  public static func == (lhs: AtelierError, rhs: AtelierError) -> Bool {
    lhs.code == rhs.code && lhs.message == rhs.message
  }
}

/// The JSON body of every error answer, from the manager and from the agent.
public struct ErrorBody: Codable, Sendable, Equatable {
  /// One of `AtelierError.Code`'s raw values.
  public var error: String
  public var message: String
  public init(error: String, message: String) {
    self.error = error
    self.message = message
  }
}
