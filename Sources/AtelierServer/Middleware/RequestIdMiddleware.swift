import AtelierCore
import HTTPTypes
import Hummingbird

/// Gives every request an id: in each log line about it and in its `X-Request-Id` answer. A
/// caller's own id is kept when it is short and plain.
struct RequestIdMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext
  static let header = HTTPField.Name("X-Request-Id")!

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    let given = request.headers[Self.header] ?? ""
    context.requestId =
      given.count <= 64 && !given.isEmpty
        && given.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-") })
      ? given : Identifier.make(length: 16)
    context.logger[metadataKey: "request"] = .string(context.requestId)
    // The path alone: a query may carry a WebSocket's token.
    context.logger.debug("\(request.method) \(request.uri.path)")
    let started = ContinuousClock.now
    var response = try await next(request, context)
    response.headers[Self.header] = context.requestId
    context.logger.debug(
      "\(request.method) \(request.uri.path) answered \(response.status.code)",
      metadata: ["took": "\(ContinuousClock.now - started)"])
    return response
  }
}
