import Hummingbird

/// One operation of the manager's API: how it is served and how it is documented. The router
/// and the OpenAPI document are both generated from the same list, so they cannot drift.
public struct APIRoute: Sendable {
  public struct Parameter: Sendable {
    public var name: String
    public var location: String  // "path" or "query"
    public var description: String
    public var schema: JSONValue
    public var required: Bool
  }

  public var method: HTTPRequest.Method
  /// OpenAPI form, e.g. `/api/sandboxes/{id}`.
  public var path: String
  public var summary: String
  public var tag: String
  public var requiresAuth: Bool
  public var parameters: [Parameter]
  /// Schema of the request body, if any (JSON unless `rawRequestBody`).
  public var requestBody: JSONValue?
  public var rawRequestBody: Bool
  public var rawResponseBody: Bool
  /// Status code → (description, schema or nil).
  public var responses: [Int: (String, JSONValue?)]
  public var handler: @Sendable (Request, BasicRequestContext) async throws -> Response

  public init(
    _ method: HTTPRequest.Method, _ path: String, summary: String, tag: String,
    requiresAuth: Bool = true, parameters: [Parameter] = [], requestBody: JSONValue? = nil,
    rawRequestBody: Bool = false, rawResponseBody: Bool = false,
    responses: [Int: (String, JSONValue?)],
    handler: @escaping @Sendable (Request, BasicRequestContext) async throws -> Response
  ) {
    self.method = method
    self.path = path
    self.summary = summary
    self.tag = tag
    self.requiresAuth = requiresAuth
    self.parameters = parameters
    self.requestBody = requestBody
    self.rawRequestBody = rawRequestBody
    self.rawResponseBody = rawResponseBody
    self.responses = responses
    self.handler = handler
  }

  static func pathParameter(_ name: String, _ description: String) -> Parameter {
    Parameter(
      name: name, location: "path", description: description, schema: ["type": "string"],
      required: true)
  }

  static func queryParameter(
    _ name: String, _ description: String, schema: JSONValue = ["type": "string"]
  )
    -> Parameter
  {
    Parameter(
      name: name, location: "query", description: description, schema: schema, required: false)
  }
}

/// OpenAPI 3.1 from the route list and the component schemas.
enum OpenAPIDocument {
  static func make(routes: [APIRoute], schemas: [String: JSONValue], version: String) -> JSONValue {
    var paths: [String: [String: JSONValue]] = [:]
    for route in routes {
      var operation: [String: JSONValue] = [
        "summary": .string(route.summary),
        "tags": [.string(route.tag)],
        "operationId": .string(operationId(route)),
      ]
      if !route.parameters.isEmpty {
        operation["parameters"] = .array(
          route.parameters.map {
            [
              "name": .string($0.name), "in": .string($0.location),
              "description": .string($0.description), "required": .bool($0.required),
              "schema": $0.schema,
            ]
          })
      }
      if let body = route.requestBody {
        let type = route.rawRequestBody ? "application/octet-stream" : "application/json"
        operation["requestBody"] = ["required": true, "content": [type: ["schema": body]]]
      }
      var responses: [String: JSONValue] = [:]
      for (status, (description, schema)) in route.responses {
        var response: [String: JSONValue] = ["description": .string(description)]
        let type =
          route.rawResponseBody && status < 300 ? "application/octet-stream" : "application/json"
        if let schema { response["content"] = [type: ["schema": schema]] }
        responses[String(status)] = .object(response)
      }
      if route.requiresAuth {
        responses["401"] = [
          "description": "missing or invalid token",
          "content": ["application/json": ["schema": ref("Error")]],
        ]
        operation["security"] = [["bearerAuth": []]]
      }
      operation["responses"] = .object(responses)
      paths[route.path, default: [:]][route.method.rawValue.lowercased()] = .object(operation)
    }
    return [
      "openapi": "3.1.0",
      "info": [
        "title": "Atelier manager API", "version": .string(version),
        "description": "MicroVM sandboxes for development: create, run commands, delete.",
      ],
      "paths": .object(paths.mapValues { .object($0) }),
      "components": [
        "schemas": .object(schemas),
        "securitySchemes": ["bearerAuth": ["type": "http", "scheme": "bearer"]],
      ],
    ]
  }

  static func operationId(_ route: APIRoute) -> String {
    let words = route.path.split(separator: "/").filter { $0 != "api" }.map { part -> String in
      part.hasPrefix("{") ? "By" + part.dropFirst().dropLast().capitalized : part.capitalized
    }
    return route.method.rawValue.lowercased()
      + words.joined().replacingOccurrences(of: "-", with: "")
  }

  static func ref(_ name: String) -> JSONValue { ["$ref": .string("#/components/schemas/\(name)")] }
}
