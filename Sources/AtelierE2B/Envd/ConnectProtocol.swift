import AtelierCore
import AtelierHost
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The parts of the Connect protocol envd speaks, with the JSON codec: unary calls
/// (`application/json` both ways, errors as an HTTP status and `{"code", "message"}`) and
/// streams (`application/connect+json`: each message in an envelope — a flags byte, a
/// big-endian 32-bit length, the JSON — the last one flagged end-of-stream and holding `{}` or
/// `{"error": …}`).
enum Connect {
  static let unaryContentType = "application/json"
  static let streamContentType = "application/connect+json"
  /// The largest message taken or sent.
  static let maxMessageBytes = 32 << 20
  static let endOfStream: UInt8 = 0x02
  static let compressed: UInt8 = 0x01

  /// A frame: flags, length, payload.
  static func envelope(_ payload: Data, flags: UInt8 = 0) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.reserveCapacity(payload.count + 5)
    buffer.writeInteger(flags)
    buffer.writeInteger(UInt32(payload.count), endianness: .big)
    buffer.writeBytes(payload)
    return buffer
  }

  /// The end-of-stream frame: `{}`, or the error.
  static func endFrame(_ error: ConnectError?) -> ByteBuffer {
    let payload: Data
    if let error {
      payload = (try? JSONEncoder().encode(EndOfStream(error: error.body))) ?? Data("{}".utf8)
    } else {
      payload = Data("{}".utf8)
    }
    return envelope(payload, flags: endOfStream)
  }

  struct EndOfStream: Encodable {
    var error: ConnectError.Body
  }
}

/// A Connect error: one of the protocol's codes and a message for the caller.
struct ConnectError: Error, Sendable, Equatable {
  enum Code: String, Sendable {
    case canceled, unknown
    case invalidArgument = "invalid_argument"
    case deadlineExceeded = "deadline_exceeded"
    case notFound = "not_found"
    case alreadyExists = "already_exists"
    case permissionDenied = "permission_denied"
    case resourceExhausted = "resource_exhausted"
    case failedPrecondition = "failed_precondition"
    case aborted
    case outOfRange = "out_of_range"
    case unimplemented
    case `internal`
    case unavailable
    case dataLoss = "data_loss"
    case unauthenticated

    /// The HTTP status of a unary error with this code (the protocol's table).
    var httpStatus: Int {
      switch self {
      case .canceled: 499
      case .unknown, .internal, .dataLoss: 500
      case .invalidArgument, .failedPrecondition, .outOfRange: 400
      case .deadlineExceeded: 504
      case .notFound: 404
      case .alreadyExists, .aborted: 409
      case .permissionDenied: 403
      case .resourceExhausted: 429
      case .unimplemented: 501
      case .unavailable: 503
      case .unauthenticated: 401
      }
    }
  }

  struct Body: Codable, Sendable, Equatable {
    var code: String
    var message: String
  }

  var code: Code
  var message: String

  init(_ code: Code, _ message: String) {
    self.code = code
    self.message = message
  }

  var body: Body { Body(code: code.rawValue, message: message) }

  /// What an Atelier error (the manager's, or the agent's relayed) means to a Connect client.
  init(_ error: AtelierError) {
    let code: Code =
      switch error.code {
      case .notFound: .notFound
      case .validation: .invalidArgument
      case .conflict: .failedPrecondition
      case .sandboxNotRunning, .bootFailed, .unavailable: .unavailable
      case .resourceExhausted: .resourceExhausted
      case .unauthorized: .unauthenticated
      case .forbidden: .permissionDenied
      case .methodNotAllowed: .unimplemented
      case .internal: .internal
      }
    self.init(code, error.message)
  }

  /// An agent's refusal (its status and message are about the guest, safe to pass on);
  /// failures are for the log.
  init(agent error: AgentCallError) {
    switch error.status {
    case 400: self.init(.invalidArgument, error.message)
    case 403: self.init(.permissionDenied, error.message)
    case 404: self.init(.notFound, error.message)
    case 409: self.init(.failedPrecondition, error.message)
    case 507, 413: self.init(.resourceExhausted, error.message)
    case nil: self.init(.unavailable, "the sandbox's agent cannot be reached")
    default: self.init(.internal, "the sandbox's agent failed; see the manager log")
    }
  }

  /// Any error, as the client will see it.
  static func from(_ error: any Error) -> ConnectError {
    switch error {
    case let error as ConnectError: error
    case let error as AtelierError: ConnectError(error)
    case let error as AgentCallError: ConnectError(agent: error)
    case is CancellationError: ConnectError(.canceled, "the request was cancelled")
    default: ConnectError(.internal, "internal error; see the manager log")
    }
  }

  /// A unary error answer.
  var response: Response {
    jsonBody(body, status: code.httpStatus, contentType: Connect.unaryContentType)
  }
}

/// Reads envelopes out of a request body as its chunks arrive (a chunked body splits them
/// anywhere).
struct EnvelopeReader {
  private var pending = ByteBuffer()

  mutating func append(_ buffer: ByteBuffer) {
    var buffer = buffer
    pending.writeBuffer(&buffer)
  }

  /// The next complete envelope's flags and payload; nil until one is there.
  mutating func next() throws -> (flags: UInt8, payload: Data)? {
    guard pending.readableBytes >= 5,
      let flags: UInt8 = pending.getInteger(at: pending.readerIndex),
      let length: UInt32 = pending.getInteger(at: pending.readerIndex + 1, endianness: .big)
    else { return nil }
    guard length <= Connect.maxMessageBytes else {
      throw ConnectError(.resourceExhausted, "message larger than \(Connect.maxMessageBytes) bytes")
    }
    guard pending.readableBytes >= 5 + Int(length) else { return nil }
    pending.moveReaderIndex(forwardBy: 5)
    let payload = Data(pending.readBytes(length: Int(length)) ?? [])
    pending.discardReadBytes()
    if flags & Connect.compressed != 0 {
      throw ConnectError(.unimplemented, "compressed messages are not supported")
    }
    return (flags, payload)
  }

  /// The one message of a server-streaming request. The body is read to its end first: a
  /// response sent before its request was read whole makes the server close the connection,
  /// which a client may have just picked to reuse.
  static func single(_ body: RequestBody) async throws -> Data {
    let buffer: ByteBuffer
    do {
      buffer = try await body.collect(upTo: Connect.maxMessageBytes + 5)
    } catch {
      throw ConnectError(.resourceExhausted, "message larger than \(Connect.maxMessageBytes) bytes")
    }
    var reader = EnvelopeReader()
    reader.append(buffer)
    guard let (flags, payload) = try reader.next(), flags & Connect.endOfStream == 0 else {
      throw ConnectError(.invalidArgument, "the request holds no message")
    }
    return payload
  }
}

/// A JSON response with a content type of its own.
func jsonBody<T: Encodable>(_ value: T, status: Int = 200, contentType: String) -> Response {
  let data = (try? JSONEncoder().encode(value)) ?? Data("{}".utf8)
  var headers = HTTPFields()
  headers[.contentType] = contentType
  return Response(
    status: .init(code: status), headers: headers,
    body: .init(byteBuffer: ByteBuffer(bytes: data)))
}
