import AtelierCore
import Hummingbird
import Synchronization

/// What a route takes as its body.
enum BodyDoc: @unchecked Sendable {
  case json(any Decodable.Type)
  /// Raw bytes, streamed (uploads, tar archives).
  case binary(String)
}

/// What a route answers with one status.
enum ResponseDoc: @unchecked Sendable {
  case json(any Decodable.Type, String)
  case binary(String)
  case eventStream(String)
  case empty(String)
  case webSocketUpgrade

  var description: String {
    switch self {
    case .json(_, let text), .binary(let text), .eventStream(let text), .empty(let text): text
    case .webSocketUpgrade: "switching to the WebSocket protocol"
    }
  }
}

/// A query parameter of a route.
struct QueryParameter: Sendable {
  var name: String
  var description: String
  var schema: JSONValue = ["type": "string"]
  var required = false
}

/// One operation as it is served and documented: registered in the same call as its handler
/// (`DocumentedRoutes`), so the router and the OpenAPI document cannot drift.
struct RouteDoc: Sendable {
  var method: HTTPRequest.Method
  /// OpenAPI form, e.g. `/api/sandboxes/{id}`.
  var path: String
  var summary: String
  var tag: String
  var requiresAuth: Bool
  var query: [QueryParameter] = []
  var body: BodyDoc?
  var responses: [Int: ResponseDoc]
  var webSocket = false
  /// The error codes the handler can answer with (besides 400 and 401, which every route has).
  var errors: [AtelierError.Code] = []
  /// Path parameters of other routes that this one's answer gives values for: name → an
  /// OpenAPI runtime expression (`$response.body#/id`).
  var produces: [String: String] = [:]

  var pathParameters: [String] {
    path.split(separator: "/").compactMap { part in
      part.hasPrefix("{") && part.hasSuffix("}") ? String(part.dropFirst().dropLast()) : nil
    }
  }

  /// Whether `path` (a request path in normal form) is an instance of this route's template.
  func matches(_ requestPath: String) -> Bool {
    let template = path.split(separator: "/", omittingEmptySubsequences: false)
    let actual = requestPath.split(separator: "/", omittingEmptySubsequences: false)
    guard template.count == actual.count else { return false }
    return zip(template, actual).allSatisfy { expected, given in
      expected.hasPrefix("{") ? !given.isEmpty : expected == given
    }
  }
}

/// Every route of the server, in registration order.
final class RouteTable: Sendable {
  private let routes = Mutex<[RouteDoc]>([])

  func add(_ route: RouteDoc) { routes.withLock { $0.append(route) } }
  var all: [RouteDoc] { routes.withLock { $0 } }

  /// The methods served on a path, for `405` answers and their `Allow` header.
  func methods(for path: String) -> [HTTPRequest.Method] {
    all.filter { $0.matches(path) }.map(\.method)
  }
}

/// Path parameters every route shares one description and form for.
enum PathParameterDocs {
  static let descriptions: [String: String] = [
    "id": "sandbox id", "snapshotId": "snapshot id", "name": "service or dev command name",
    "sid": "terminal session id",
  ]
  /// What a value may look like (anything else is refused before routing, or not found).
  static let patterns: [String: String] = [
    "id": Identifier.pattern, "snapshotId": Identifier.pattern,
    // The agent's rules: ServiceSupervisor.checkName and TerminalService's ids.
    "name": GuestFormats.namePattern, "sid": "^t[a-z0-9]{10}$",
  ]

  static func schema(_ name: String) -> JSONValue {
    guard let pattern = patterns[name] else { return ["type": "string"] }
    return ["type": "string", "pattern": .string(pattern)]
  }
}
