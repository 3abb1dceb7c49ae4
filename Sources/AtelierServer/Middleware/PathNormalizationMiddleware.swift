import AtelierCore
import Hummingbird

/// Refuses, before any routing, a request whose path is not in normal form: the router
/// ignores empty segments (`//api/x` would match `/api/x`), and encoded separators or dots
/// could mean one path to one component and another to the next. Only one spelling of each
/// path is ever routed.
struct PathNormalizationMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    if let problem = Self.problem(request.uri.path) {
      throw AtelierError.validation("path not in normal form: \(problem)")
    }
    return try await next(request, context)
  }

  /// Why `path` (raw, as received) is not in normal form, or nil when it is.
  static func problem(_ path: String) -> String? {
    guard path.hasPrefix("/") else { return "it must start with /" }
    if path == "/" { return nil }
    let segments = path.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
    for segment in segments {
      if segment.isEmpty { return "empty segment" }
      if segment == "." || segment == ".." { return "dot segment" }
      if segment.contains("\\") { return "backslash" }
    }
    let lowered = path.lowercased()
    for encoded in ["%2f", "%5c", "%2e", "%00"] where lowered.contains(encoded) {
      return "encoded separator or dot (\(encoded.uppercased()))"
    }
    return nil
  }
}
