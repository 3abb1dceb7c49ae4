import Hummingbird

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// An error answered as `{"error": CODE, "message": …}` with its HTTP status; shared by the
/// manager and the agent so both speak the same error shape.
public struct APIError: HTTPResponseError {
  public var status: HTTPResponse.Status
  public var code: String
  public var message: String

  public init(status: HTTPResponse.Status, code: String, message: String) {
    self.status = status
    self.code = code
    self.message = message
  }

  public static func badRequest(_ message: String) -> APIError {
    APIError(status: .badRequest, code: "VALIDATION_ERROR", message: message)
  }
  public static func notFound(_ message: String) -> APIError {
    APIError(status: .notFound, code: "NOT_FOUND", message: message)
  }
  public static func conflict(_ message: String) -> APIError {
    APIError(status: .conflict, code: "CONFLICT", message: message)
  }
  public static func internalError(_ message: String) -> APIError {
    APIError(status: .internalServerError, code: "INTERNAL_ERROR", message: message)
  }

  public func response(from request: Request, context: some RequestContext) throws -> Response {
    errorResponse(status: status, code: code, message: message)
  }
}

struct ErrorPayload: Encodable {
  var error: String
  var message: String
}

public func errorResponse(status: HTTPResponse.Status, code: String, message: String) -> Response {
  jsonResponse(ErrorPayload(error: code, message: message), status: status)
}

/// A JSON response; `encoder` defaults to plain JSONEncoder (the manager passes its own).
public func jsonResponse<T: Encodable>(
  _ value: T, status: HTTPResponse.Status = .ok, encoder: JSONEncoder = JSONEncoder()
) -> Response {
  let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
  return Response(
    status: status, headers: [.contentType: "application/json"],
    body: .init(byteBuffer: ByteBuffer(bytes: data)))
}

extension Request {
  /// Decodes a JSON body; a body that does not fit answers 400 saying why. An empty body
  /// decodes as `{}` so requests whose fields are all optional may omit it.
  public func decodeJSON<T: Decodable>(
    _ type: T.Type, limit: Int = 64 << 20, decoder: JSONDecoder = JSONDecoder()
  ) async throws -> T {
    let buffer: ByteBuffer
    do {
      buffer = try await body.collect(upTo: limit)
    } catch {
      throw APIError.badRequest("request body larger than \(limit) bytes")
    }
    let data = buffer.readableBytes == 0 ? Data("{}".utf8) : Data(buffer.readableBytesView)
    do {
      return try decoder.decode(T.self, from: data)
    } catch let DecodingError.keyNotFound(key, context) {
      throw APIError.badRequest("missing field \(fieldPath(context.codingPath + [key]))")
    } catch let DecodingError.typeMismatch(type, context) {
      throw APIError.badRequest("field \(fieldPath(context.codingPath)) must be \(typeName(type))")
    } catch let DecodingError.valueNotFound(type, context) {
      throw APIError.badRequest("field \(fieldPath(context.codingPath)) must be \(typeName(type))")
    } catch {
      throw APIError.badRequest("request body is not valid JSON")
    }
  }
}

func fieldPath(_ path: [any CodingKey]) -> String {
  path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

func typeName(_ type: Any.Type) -> String {
  switch type {
  case is String.Type: "a string"
  case is Int.Type, is Int32.Type, is Int64.Type: "an integer"
  case is Bool.Type: "a boolean"
  case is Double.Type: "a number"
  default: "of another type (\(type))"
  }
}
