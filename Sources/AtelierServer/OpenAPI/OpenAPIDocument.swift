import AtelierCore

/// OpenAPI 3.1 from the route table, with every schema derived from the types the handlers
/// take and return.
enum OpenAPIDocument {
  static func make(routes: [RouteDoc], version: String, context: SchemaContext) -> JSONValue {
    let registry = SchemaRegistry(context: context)
    let errorSchema = registry.schema(for: ErrorBody.self)
    var paths: [String: [String: JSONValue]] = [:]
    for route in routes {
      paths[route.path, default: [:]][route.method.rawValue.lowercased()] = operation(
        route, routes: routes, registry: registry, errorSchema: errorSchema)
    }
    return [
      "openapi": "3.1.0",
      "info": [
        "title": "Atelier manager API", "version": .string(version),
        "description": "MicroVM sandboxes for development: create, run commands, delete.",
      ],
      "paths": .object(paths.mapValues { .object($0) }),
      "components": [
        "schemas": .object(registry.components),
        "securitySchemes": [
          "bearerAuth": ["type": "http", "scheme": "bearer", "description": "an API key"],
          "sessionCookie": [
            "type": "apiKey", "in": "cookie", "name": .string(SessionSigner.cookieName),
            "description": "a browser session (POST /auth/session); writes need X-CSRF-Token",
          ],
        ],
      ],
    ]
  }

  /// OpenAPI links from a route that makes something (a sandbox, a snapshot, a service) to
  /// every operation whose path parameters it can fill: from what it answers, or from its own
  /// path. So stateful tests work on real ids.
  static func links(from route: RouteDoc, to routes: [RouteDoc]) -> JSONValue {
    var links: [String: JSONValue] = [:]
    let own = Set(route.pathParameters)
    for target in routes where target.path != route.path || target.method != route.method {
      let needed = target.pathParameters
      guard !needed.isEmpty, needed.contains(where: { route.produces[$0] != nil }),
        needed.allSatisfy({ route.produces[$0] != nil || own.contains($0) })
      else { continue }
      var parameters: [String: JSONValue] = [:]
      for name in needed {
        parameters[name] = .string(route.produces[name] ?? "$request.path.\(name)")
      }
      links[operationId(target)] = [
        "operationId": .string(operationId(target)), "parameters": .object(parameters),
      ]
    }
    return .object(links)
  }

  static func operation(
    _ route: RouteDoc, routes: [RouteDoc], registry: SchemaRegistry, errorSchema: JSONValue
  ) -> JSONValue {
    var operation: [String: JSONValue] = [
      "summary": .string(route.summary), "tags": [.string(route.tag)],
      "operationId": .string(operationId(route)),
    ]
    var parameters: [JSONValue] = route.pathParameters.map { name in
      [
        "name": .string(name), "in": "path", "required": true,
        "schema": PathParameterDocs.schema(name),
        "description": .string(PathParameterDocs.descriptions[name] ?? name),
      ]
    }
    var query = route.query
    if route.webSocket {
      query.append(
        QueryParameter(
          name: "token", description: "API token, for clients that cannot send a header"))
      operation["x-websocket"] = true
    }
    parameters += query.map { parameter in
      [
        "name": .string(parameter.name), "in": "query", "required": .bool(parameter.required),
        "description": .string(parameter.description), "schema": parameter.schema,
      ]
    }
    if !parameters.isEmpty { operation["parameters"] = .array(parameters) }
    if let body = route.body { operation["requestBody"] = requestBody(body, registry: registry) }
    var responses: [String: JSONValue] = [:]
    for (status, response) in route.responses {
      var answer = self.response(response, registry: registry)
      if (200..<300).contains(status), !route.produces.isEmpty,
        case .object(var object) = answer
      {
        object["links"] = links(from: route, to: routes)
        answer = .object(object)
      }
      responses[String(status)] = answer
    }
    for (status, text) in errorStatuses(route) {
      responses[String(status)] = [
        "description": .string(text), "content": ["application/json": ["schema": errorSchema]],
      ]
    }
    if route.requiresAuth { operation["security"] = [["bearerAuth": []], ["sessionCookie": []]] }
    operation["responses"] = .object(responses)
    return .object(operation)
  }

  /// Every status an error of this route can have, with the codes behind it.
  static func errorStatuses(_ route: RouteDoc) -> [(Int, String)] {
    var codes = route.errors + [.validation]
    if route.requiresAuth { codes.append(.unauthorized) }
    // A write with a session cookie but without its CSRF token.
    if route.requiresAuth && ![.get, .head].contains(route.method) { codes.append(.forbidden) }
    let byStatus = Dictionary(grouping: Set(codes), by: \.httpStatus)
    return byStatus.keys.sorted().map { status in
      let names = byStatus[status]!.map(\.rawValue).sorted().joined(separator: ", ")
      let why = status == 400 ? "invalid request (or a path not in normal form)" : names
      return (status, status == 400 ? why : "error: \(why)")
    }
  }

  static func requestBody(_ body: BodyDoc, registry: SchemaRegistry) -> JSONValue {
    switch body {
    case .json(let type):
      let schema = registry.schema(for: type)
      let required = !registry.objectSchema(for: type).required.isEmpty
      return ["required": .bool(required), "content": ["application/json": ["schema": schema]]]
    case .binary(let text, let contentType):
      return [
        "required": true, "description": .string(text),
        "content": [contentType: ["schema": ["type": "string", "format": "binary"]]],
      ]
    }
  }

  static func response(_ response: ResponseDoc, registry: SchemaRegistry) -> JSONValue {
    let description = JSONValue.string(response.description)
    switch response {
    case .json(let type, _):
      return [
        "description": description,
        "content": ["application/json": ["schema": registry.schema(for: type)]],
      ]
    case .binary(_, let contentType):
      return [
        "description": description,
        "content": [contentType: ["schema": ["type": "string", "format": "binary"]]],
      ]
    case .eventStream:
      return [
        "description": description,
        "content": [
          "text/event-stream": [
            "schema": [
              "type": "object", "description": "one event",
              "properties": [
                "id": ["type": "string"], "event": ["type": "string"], "data": ["type": "string"],
              ],
              "required": ["data"],
            ]
          ]
        ],
      ]
    case .empty, .webSocketUpgrade:
      return ["description": description]
    }
  }

  static func operationId(_ route: RouteDoc) -> String {
    let words = route.path.split(separator: "/").filter { $0 != "api" }.map { part -> String in
      part.hasPrefix("{") ? "By" + part.dropFirst().dropLast().capitalized : part.capitalized
    }
    return route.method.rawValue.lowercased()
      + words.joined().replacingOccurrences(of: "-", with: "").replacingOccurrences(
        of: ".", with: "")
  }

  static func ref(_ name: String) -> JSONValue { ["$ref": .string("#/components/schemas/\(name)")] }
}

extension ErrorBody: SchemaDescribed {
  static var schemaName: String { "Error" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("error", "enum", .array(AtelierError.Code.allCases.map { .string($0.rawValue) }))
  }
}
