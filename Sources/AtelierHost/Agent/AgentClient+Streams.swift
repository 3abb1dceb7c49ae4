import AsyncHTTPClient
import AtelierAgentAPI
import Foundation
import NIOCore
import NIOHTTP1

/// Calls for clients of the agent's other operations (the E2B adapter): JSON both ways, and
/// responses whose bodies stream (process events, watches, downloads).
extension AgentClient {
  public func setEnvironment(_ request: GuestEnvironmentRequest) async throws
    -> GuestEnvironmentStatus
  {
    try await call(.PUT, "/system/environment", body: request, timeout: .seconds(10))
  }

  /// A JSON call: `body` (if any) encoded, the answer decoded as `Result`.
  public func json<Body: Encodable, Result: Decodable>(
    _ method: HTTPMethod, _ path: String, body: Body?, as: Result.Type,
    timeout: Duration = .seconds(60)
  ) async throws -> Result {
    try await call(method, path, body: body, timeout: timeout)
  }

  /// A call whose answer does not matter beyond its status.
  public func send<Body: Encodable>(
    _ method: HTTPMethod, _ path: String, body: Body?, timeout: Duration = .seconds(60)
  ) async throws {
    let data = try body.map { try JSONEncoder().encode($0) }
    _ = try await raw(method, path, body: data, timeout: timeout)
  }

  /// The response of a call whose body streams, once its head arrived; an error status is
  /// thrown as `AgentCallError` (its body read, a little). `body` is sent as given, with its
  /// content type (JSON when nil and there is a body).
  public func stream(
    _ method: HTTPMethod, _ path: String, body: HTTPClientRequest.Body? = nil,
    contentType: String? = nil, deadline: Duration = .seconds(86_400)
  ) async throws -> HTTPClientResponse {
    var request = HTTPClientRequest(url: try baseURL() + path)
    request.method = method
    if let authorization { request.headers.add(name: "authorization", value: authorization) }
    if let body {
      request.headers.add(name: "content-type", value: contentType ?? "application/json")
      request.body = body
    }
    let response: HTTPClientResponse
    do {
      response = try await http.execute(
        request, timeout: .nanoseconds(Int64(deadline.wholeNanoseconds)))
    } catch {
      throw AgentCallError(status: nil, code: "AGENT_UNREACHABLE", message: "\(error)")
    }
    let status = Int(response.status.code)
    guard status < 400 else {
      let collected = (try? await response.body.collect(upTo: 1 << 20)) ?? ByteBuffer()
      let data = Data(collected.readableBytesView)
      let error = try? JSONDecoder().decode(ErrorBody.self, from: data)
      throw AgentCallError(
        status: status, code: error?.error ?? "AGENT_ERROR",
        message: error?.message ?? String(decoding: data.prefix(500), as: UTF8.self))
    }
    return response
  }
}
