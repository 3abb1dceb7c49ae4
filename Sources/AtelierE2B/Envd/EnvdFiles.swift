import AsyncHTTPClient
import AtelierAgentAPI
import AtelierCore
import AtelierHTTP
import AtelierHost
import CompressNIO
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// envd's plain file transfers: `GET /files?path=&username=` streams a file down;
/// `POST /files` writes one or many, as `multipart/form-data` (each part's file name is its
/// path; `?path=` names the only one) or as a raw `application/octet-stream` body (`?path=`).
/// Errors are `{"code": <status>, "message"}` with envd's statuses (404 for a missing file).
struct EnvdFiles<Context: RequestContext>: Sendable {
  let routes: EnvdRoutes<Context>

  func addRoutes(to router: Router<Context>) {
    router.get("files") { request, _ in
      try await answer { try await download(request) }
    }
    router.post("files") { request, _ in
      try await answer { try await upload(request) }
    }
  }

  func answer(_ work: () async throws -> Response) async throws -> Response {
    do {
      return try await work()
    } catch let refusal as EnvdRefusal {
      return refusal.response
    } catch let error as AgentCallError {
      let status =
        switch error.status {
        case 400, 403, 404: error.status!
        case 409: 400
        case 413, 507: 507
        case nil: 502
        default: 500
        }
      let message =
        status == 500 ? "the sandbox's agent failed; see the manager log" : error.message
      if status == 500 { routes.logger.error("envd /files failed: \(error)") }
      return EnvdRefusal(status: status, message: message).response
    } catch let error as ConnectError {
      return EnvdRefusal(status: error.code.httpStatus, message: error.message).response
    }
  }

  func download(_ request: Request) async throws -> Response {
    let call = try await routes.gate.open(
      request, username: request.uri.queryParameters.get("username"))
    let path = try call.path(request.uri.queryParameters.get("path"))
    let response = try await call.agent.stream(
      .GET, "/files?path=\(EnvdFilesystem<Context>.query(path))")
    var headers = HTTPFields()
    headers[.contentType] = "application/octet-stream"
    let length = response.headers.first(name: "content-length").flatMap(Int.init)
    if let length { headers[.contentLength] = String(length) }
    let body = response.body
    let routes = routes
    return Response(
      status: .ok, headers: headers,
      body: ResponseBody(contentLength: length) { writer in
        try await routes.inUse(call.sandboxId) {
          for try await buffer in body { try await writer.write(buffer) }
          try await writer.finish(nil)
        }
      })
  }

  func upload(_ request: Request) async throws -> Response {
    let query = request.uri.queryParameters
    let call = try await routes.gate.open(request, username: query.get("username"))
    let contentType = request.headers[.contentType] ?? ""
    let encoding = request.headers[.contentEncoding]?.lowercased() ?? "identity"
    var written: [Envd.WriteInfo] = []
    if encoding == "gzip", Multipart.boundary(contentType) == nil {
      let path = try call.path(query.get("path"))
      try await put(path, .bytes(try await Self.gunzip(request.body)), call)
      written.append(Self.info(path))
    } else if encoding != "identity" {
      throw ConnectError(
        .invalidArgument, "Content-Encoding \(encoding) is not supported (gzip: raw bodies only)")
    } else if let boundary = Multipart.boundary(contentType) {
      let buffer: ByteBuffer
      do {
        buffer = try await request.body.collect(upTo: Multipart.maxBytes)
      } catch {
        throw ConnectError(.resourceExhausted, "a multipart upload holds at most 256 MiB")
      }
      let parts = try Multipart.parts(Array(buffer.readableBytesView), boundary: boundary)
      guard !parts.isEmpty else { throw ConnectError(.invalidArgument, "no file in the upload") }
      for part in parts {
        let target = parts.count == 1 ? (query.get("path") ?? part.filename) : part.filename
        let path = try call.path(target)
        try await put(path, .bytes(ByteBuffer(bytes: part.content)), call)
        written.append(Self.info(path))
      }
    } else {
      let path = try call.path(query.get("path"))
      let length = request.headers[.contentLength].flatMap { Int64($0) }
      try await put(
        path,
        .stream(SinglePassSequence(request.body), length: length.map { .known($0) } ?? .unknown),
        call)
      written.append(Self.info(path))
    }
    return jsonResponse(written)
  }

  /// A gzip body, unpacked in memory (both sides at most `Multipart.maxBytes`).
  static func gunzip(_ body: RequestBody) async throws -> ByteBuffer {
    var compressed: ByteBuffer
    do {
      compressed = try await body.collect(upTo: Multipart.maxBytes)
    } catch {
      throw ConnectError(.resourceExhausted, "a gzip upload holds at most 256 MiB")
    }
    do {
      return try compressed.decompress(with: .gzip(), maxSize: Multipart.maxBytes)
    } catch {
      throw ConnectError(.invalidArgument, "the gzip body cannot be unpacked (or is over 256 MiB)")
    }
  }

  func put(_ path: String, _ body: HTTPClientRequest.Body, _ call: EnvdCall) async throws {
    var target = "/files?path=\(EnvdFilesystem<Context>.query(path))"
    if let owner = call.owner { target += "&owner=\(EnvdFilesystem<Context>.query(owner))" }
    try await routes.inUse(call.sandboxId) {
      let response = try await call.agent.stream(
        .PUT, target, body: body, contentType: "application/octet-stream")
      _ = try await response.body.collect(upTo: 1 << 20)
    }
  }

  static func info(_ path: String) -> Envd.WriteInfo {
    Envd.WriteInfo(
      name: String(path.split(separator: "/").last ?? ""), type: "file", path: path,
      metadata: nil)
  }
}

/// Just enough of `multipart/form-data` (RFC 7578) for envd's uploads: each part's
/// `filename` (its guest path) and content.
enum Multipart {
  /// A multipart body is read whole before it is parsed.
  static let maxBytes = 256 << 20

  struct Part: Equatable {
    var filename: String?
    var content: [UInt8]
  }

  /// The boundary of a `multipart/form-data` content type, or nil for another type.
  static func boundary(_ contentType: String) -> String? {
    let fields = contentType.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
    guard fields.first?.lowercased() == "multipart/form-data" else { return nil }
    for field in fields.dropFirst() where field.lowercased().hasPrefix("boundary=") {
      let value = field.dropFirst("boundary=".count)
      return String(
        value.hasPrefix("\"") && value.hasSuffix("\"") ? value.dropFirst().dropLast() : value)
    }
    return nil
  }

  static func parts(_ body: [UInt8], boundary: String) throws -> [Part] {
    let delimiter = Array("--\(boundary)".utf8)
    var parts: [Part] = []
    guard var start = find(delimiter, in: body, from: 0) else {
      throw ConnectError(.invalidArgument, "the multipart body has no boundary")
    }
    while true {
      var cursor = start + delimiter.count
      // `--` after a delimiter ends the body.
      if body.count >= cursor + 2 && body[cursor] == 0x2D && body[cursor + 1] == 0x2D { break }
      cursor = (find([0x0D, 0x0A], in: body, from: cursor) ?? body.count) + 2
      guard let headersEnd = find([0x0D, 0x0A, 0x0D, 0x0A], in: body, from: cursor - 2),
        let next = find([0x0D, 0x0A] + delimiter, in: body, from: headersEnd + 4)
      else { throw ConnectError(.invalidArgument, "the multipart body is cut short") }
      let headers = String(decoding: body[min(cursor, headersEnd)..<headersEnd], as: UTF8.self)
      parts.append(Part(filename: filename(headers), content: Array(body[(headersEnd + 4)..<next])))
      start = next + 2
    }
    return parts
  }

  /// `filename="…"` of a part's `Content-Disposition`.
  static func filename(_ headers: String) -> String? {
    for line in headers.split(separator: "\r\n")
    where line.lowercased().hasPrefix("content-disposition:") {
      guard let range = line.range(of: "filename=\"") else { return nil }
      let rest = line[range.upperBound...]
      return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
    }
    return nil
  }

  static func find(_ needle: [UInt8], in haystack: [UInt8], from: Int) -> Int? {
    guard !needle.isEmpty, haystack.count >= needle.count, from <= haystack.count - needle.count
    else { return nil }
    var index = from
    let last = haystack.count - needle.count
    while index <= last {
      if haystack[index] == needle[0]
        && haystack[index..<(index + needle.count)].elementsEqual(needle)
      {
        return index
      }
      index += 1
    }
    return nil
  }
}
