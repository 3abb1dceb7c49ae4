import AsyncHTTPClient
import AtelierAgentAPI
import Foundation
import NIOCore
import NIOHTTP1

/// A failed call to a guest agent: either it answered with an error, or it could not be
/// reached at all (`status == nil`).
public struct AgentCallError: Error, CustomStringConvertible, Sendable {
  public var status: Int?
  public var code: String
  public var message: String
  public var description: String { "agent \(status.map(String.init) ?? "unreachable"): \(message)" }
}

/// Talks HTTP/1.1 + JSON to one guest agent.
public struct AgentClient: Sendable {
  public let endpoint: AgentEndpoint
  let http: HTTPClient

  public init(endpoint: AgentEndpoint, http: HTTPClient = .shared) {
    self.endpoint = endpoint
    self.http = http
  }

  /// Hybrid vsock agents are reached through a loopback forwarder (HTTP clients speak TCP).
  func baseURL() throws -> String {
    do {
      let (host, port) = try endpoint.tcpAddress()
      return "http://\(host):\(port)"
    } catch {
      throw AgentCallError(status: nil, code: "AGENT_UNREACHABLE", message: "\(error)")
    }
  }

  public func health(timeout: Duration = .seconds(2)) async throws -> AgentHealth {
    try await call(.GET, "/health", body: Optional<String>.none, timeout: timeout)
  }

  public func exec(_ request: ExecRequest) async throws -> ExecResult {
    // The agent enforces the command's own timeout; allow a margin for the reply.
    let timeout: Duration = .milliseconds(request.timeoutMs ?? 3_600_000) + .seconds(30)
    return try await call(.POST, "/exec", body: request, timeout: timeout)
  }

  public func resumeGuest(_ request: GuestResumeRequest) async throws -> AgentHealth {
    try await call(.POST, "/system/resume", body: request, timeout: .seconds(10))
  }

  public func powerOff() async throws {
    _ = try await raw(.POST, "/system/poweroff", body: nil, timeout: .seconds(5))
  }

  /// Polls `/health` until the agent answers as `sandboxId` (any id when nil). Stops early with
  /// the reason when `stillBooting` says the VM is gone.
  public func waitUntilReady(
    sandboxId: String?, timeout: Duration, stillBooting: @Sendable () -> Bool
  ) async throws {
    let deadline = ContinuousClock.now + timeout
    var lastError = "no answer"
    while ContinuousClock.now < deadline {
      guard stillBooting() else {
        throw AgentCallError(status: nil, code: "VM_EXITED", message: "the VM exited while booting")
      }
      do {
        let health = try await health(timeout: .seconds(2))
        if sandboxId == nil || health.sandboxId == sandboxId { return }
        lastError = "agent answered as \(health.sandboxId), expected \(sandboxId ?? "")"
      } catch {
        lastError = "\(error)"
      }
      try await Task.sleep(for: .milliseconds(50))
    }
    throw AgentCallError(
      status: nil, code: "AGENT_TIMEOUT",
      message: "agent did not answer within \(timeout) (\(lastError))")
  }

  // MARK: Transport

  func call<Body: Encodable, Result: Decodable>(
    _ method: HTTPMethod, _ path: String, body: Body?, timeout: Duration
  ) async throws -> Result {
    let data = try body.map { try JSONEncoder().encode($0) }
    let (_, bytes) = try await raw(method, path, body: data, timeout: timeout)
    do {
      return try JSONDecoder().decode(Result.self, from: bytes)
    } catch {
      throw AgentCallError(
        status: 200, code: "BAD_RESPONSE", message: "unexpected answer from agent")
    }
  }

  public func raw(_ method: HTTPMethod, _ path: String, body: Data?, timeout: Duration)
    async throws -> (Int, Data)
  {
    var request = HTTPClientRequest(url: try baseURL() + path)
    request.method = method
    if let body {
      request.headers.add(name: "content-type", value: "application/json")
      request.body = .bytes(ByteBuffer(bytes: body))
    }
    let response: HTTPClientResponse
    var collected: ByteBuffer
    do {
      response = try await http.execute(
        request, timeout: .nanoseconds(Int64(timeout.wholeNanoseconds)))
      collected = try await response.body.collect(upTo: 256 << 20)
    } catch {
      throw AgentCallError(status: nil, code: "AGENT_UNREACHABLE", message: "\(error)")
    }
    let data = Data(collected.readableBytesView)
    let status = Int(response.status.code)
    if status >= 400 {
      let body = try? JSONDecoder().decode(ErrorBody.self, from: data)
      throw AgentCallError(
        status: status, code: body?.error ?? "AGENT_ERROR",
        message: body?.message ?? String(decoding: data.prefix(500), as: UTF8.self))
    }
    return (status, data)
  }
}

extension Duration {
  var wholeNanoseconds: Int64 {
    components.seconds * 1_000_000_000 + components.attoseconds / 1_000_000_000
  }
}
