/// The one error type that crosses the API: a code that maps to an HTTP status and a message
/// safe to show to the caller.
public struct AtelierError: Error, Sendable, Equatable, CustomStringConvertible {
  public enum Code: String, Sendable, Codable, CaseIterable {
    case notFound = "NOT_FOUND"
    case validation = "VALIDATION_ERROR"
    case conflict = "CONFLICT"
    case sandboxNotRunning = "SANDBOX_NOT_RUNNING"
    case resourceExhausted = "RESOURCE_EXHAUSTED"
    case unauthorized = "UNAUTHORIZED"
    case forbidden = "FORBIDDEN"
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
      case .bootFailed, .unavailable: 503
      case .internal: 500
      }
    }
  }

  public var code: Code
  public var message: String

  public init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  public var description: String { "\(code.rawValue): \(message)" }

  public static func notFound(_ message: String) -> Self { .init(.notFound, message) }
  public static func validation(_ message: String) -> Self { .init(.validation, message) }
  public static func conflict(_ message: String) -> Self { .init(.conflict, message) }
}

/// The JSON body of every error response.
public struct ErrorBody: Codable, Sendable, Equatable {
  public var error: String
  public var message: String
  public init(error: String, message: String) {
    self.error = error
    self.message = message
  }
}
