import AtelierCore
import AtelierHTTP
import Hummingbird

/// Every failure leaves as `{"error", "message"}` with its status; causes and internal errors
/// go to the log only. A path the router does not know answers 404, a known path with another
/// method 405 with `Allow`.
struct ErrorMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext
  let routes: RouteTable

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    do {
      return try await next(request, context)
    } catch let error as AtelierError {
      if error.code == .internal || error.cause != nil {
        context.logger.error(
          "\(request.method.rawValue) \(request.uri.path): \(error)",
          metadata: ["request": "\(context.requestId)"])
      }
      return errorResponse(error)
    } catch let error as HTTPError where error.status == .notFound {
      return unmatched(request)
    } catch let error as HTTPError {
      let message = error.body ?? error.status.reasonPhrase
      return errorResponse(
        AtelierError(AtelierError.Code(httpStatus: error.status.code), message))
    } catch {
      context.logger.error(
        "internal error on \(request.method.rawValue) \(request.uri.path): \(error)",
        metadata: ["request": "\(context.requestId)"])
      return errorResponse(.internal("internal error; see the manager log"))
    }
  }

  func unmatched(_ request: Request) -> Response {
    let methods = routes.methods(for: request.uri.path)
    guard !methods.isEmpty else {
      return errorResponse(
        .notFound("no route \(request.method.rawValue) \(request.uri.path)"))
    }
    let allowed = methods.map(\.rawValue).joined(separator: ", ")
    return errorResponse(
      AtelierError(
        .methodNotAllowed,
        "\(request.method.rawValue) is not allowed on \(request.uri.path) (allowed: \(allowed))"),
      headers: [.allow: allowed])
  }
}
