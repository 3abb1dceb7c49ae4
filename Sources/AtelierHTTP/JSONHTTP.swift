import AtelierAgentAPI
import Hummingbird

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The agent's name for the shared error type (its routes throw these).
public typealias APIError = AtelierError

extension AtelierError: HTTPResponseError {
  public var status: HTTPResponse.Status { .init(code: code.httpStatus) }

  public func response(from request: Request, context: some RequestContext) throws -> Response {
    errorResponse(self)
  }

  /// An error from its HTTP status and code string (unknown codes follow the status).
  public init(status: HTTPResponse.Status, code: String, message: String) {
    self.init(Code(rawValue: code) ?? Code(httpStatus: status.code), message)
  }

  public static func badRequest(_ message: String) -> AtelierError { .validation(message) }
  public static func internalError(_ message: String) -> AtelierError { .internal(message) }
}

/// `{"error": CODE, "message": …}` with the error's status.
public func errorResponse(_ error: AtelierError, headers: HTTPFields = [:]) -> Response {
  var response = jsonResponse(error.body, status: error.status, encoder: sortedKeys)
  for field in headers { response.headers.append(field) }
  return response
}

private let sortedKeys: JSONEncoder = {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.sortedKeys]
  return encoder
}()

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
      throw AtelierError.validation("request body larger than \(limit) bytes")
    }
    let data = buffer.readableBytes == 0 ? Data("{}".utf8) : Data(buffer.readableBytesView)
    return try decodeJSONBody(type, from: data, decoder: decoder)
  }
}

/// Decodes `data` as `T`; what does not fit is a 400 naming the field.
public func decodeJSONBody<T: Decodable>(
  _ type: T.Type, from data: Data, decoder: JSONDecoder = JSONDecoder()
) throws -> T {
  do {
    return try decoder.decode(T.self, from: data)
  } catch let DecodingError.keyNotFound(key, context) {
    throw AtelierError.validation("missing field \(fieldPath(context.codingPath + [key]))")
  } catch let DecodingError.typeMismatch(type, context) {
    throw AtelierError.validation(
      "field \(fieldPath(context.codingPath)) must be \(typeName(type))")
  } catch let DecodingError.valueNotFound(type, context) {
    throw AtelierError.validation(
      "field \(fieldPath(context.codingPath)) must be \(typeName(type))")
  } catch let DecodingError.dataCorrupted(context) where !context.codingPath.isEmpty {
    throw AtelierError.validation(
      "field \(fieldPath(context.codingPath)) has an invalid value")
  } catch {
    throw AtelierError.validation("request body is not valid JSON")
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
