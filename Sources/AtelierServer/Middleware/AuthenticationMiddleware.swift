import AtelierCore
import AtelierStore
import Crypto
import Foundation
import Hummingbird

/// Checks API tokens against their stored hashes (each time: a revoked token stops working at
/// once).
struct TokenVerifier: Sendable {
  let database: AtelierDatabase

  static func hash(_ token: String) -> String {
    SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
  }

  func principal(for token: String) -> Principal? {
    guard !token.isEmpty, let record = try? database.token(hash: Self.hash(token)) else {
      return nil
    }
    return Principal(tokenId: record.id, name: record.name)
  }
}

/// On every route of the group it is added to: a valid token, or 401. The token comes from
/// `Authorization: Bearer`, or — for WebSocket upgrades only, as browsers cannot set headers
/// there — from `?token=`.
struct AuthenticationMiddleware: RouterMiddleware {
  typealias Context = ManagerRequestContext
  let tokens: TokenVerifier

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    var context = context
    context.principal = try authenticate(request)
    return try await next(request, context)
  }

  func authenticate(_ request: Request) throws -> Principal {
    let header = request.headers[.authorization] ?? ""
    let queryToken = request.uri.queryParameters.get("token")
    let token: String
    if !header.isEmpty {
      guard header.hasPrefix("Bearer ") else {
        throw AtelierError.unauthorized("the Authorization header must be `Bearer <token>`")
      }
      token = String(header.dropFirst("Bearer ".count))
    } else if let queryToken {
      guard request.isWebSocketUpgrade else {
        throw AtelierError.unauthorized(
          "?token= is accepted on WebSocket upgrades only; send Authorization: Bearer")
      }
      token = queryToken
    } else {
      throw AtelierError.unauthorized("missing bearer token")
    }
    guard let principal = tokens.principal(for: token) else {
      throw AtelierError.unauthorized("invalid token")
    }
    return principal
  }
}
