import AsyncHTTPClient
import AtelierCore
import AtelierHTTP
import AtelierHost
import AtelierManager
import HTTPTypes
import Hummingbird
import HummingbirdWSClient
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1

/// Forwards `/api/sandboxes/{id}/<agent path>` to the sandbox's agent: request and response
/// bodies are streamed both ways (large uploads and downloads are never held in memory), and
/// WebSockets are piped frame by frame.
struct AgentProxy: Sendable {
  let service: SandboxService
  let logger: Logger

  /// The sandbox's agent: where it answers, and the `Authorization` value its key makes.
  func agent(_ id: String, scheme: String = "http") async throws
    -> (url: String, authorization: String?)
  {
    let agent = try await service.agentClient(id)
    guard let url = try? agent.baseURL(scheme: scheme) else {
      throw AtelierError(.unavailable, "the agent of sandbox \(id) is unreachable")
    }
    return (url, agent.authorization)
  }

  func forward(_ request: Request, sandboxId id: String, agentPath: String) async throws -> Response
  {
    let agent = try await agent(id)
    var url = agent.url + agentPath
    if let query = request.uri.query, !query.isEmpty { url += "?\(query)" }
    var outgoing = HTTPClientRequest(url: url)
    outgoing.method = HTTPMethod(rawValue: request.method.rawValue)
    if let value = agent.authorization {
      outgoing.headers.add(name: "authorization", value: value)
    }
    if let contentType = request.headers[.contentType] {
      outgoing.headers.add(name: "content-type", value: contentType)
    }
    if request.method == .put || request.method == .post || request.method == .patch {
      let length = request.headers[.contentLength].flatMap { Int64($0) }
      outgoing.body = .stream(
        SinglePassSequence(request.body), length: length.map { .known($0) } ?? .unknown)
    }
    // A request in flight is activity for as long as it lasts (a long upload, download or
    // batch must not see its sandbox paused as idle under it), until its response body is
    // written or dropped, whichever way that happens.
    let activity = await ActivityLease(service: service, sandboxId: id)
    let response: HTTPClientResponse
    do {
      response = try await HTTPClient.shared.execute(outgoing, timeout: .hours(2))
    } catch {
      logger.warning("agent proxy failed", metadata: ["sandbox": "\(id)", "error": "\(error)"])
      throw AtelierError(.unavailable, "the agent of sandbox \(id) is unreachable")
    }
    var headers = HTTPFields()
    for name in ["content-type", "content-length"] {
      if let value = response.headers.first(name: name), let field = HTTPField.Name(name) {
        headers[field] = value
      }
    }
    let length = response.headers.first(name: "content-length").flatMap(Int.init)
    // Read once, whatever asks twice: a second read of the client's body traps.
    let body = SinglePassSequence(response.body)
    return Response(
      status: .init(code: Int(response.status.code)), headers: headers,
      body: ResponseBody(contentLength: length) { writer in
        defer { withExtendedLifetime(activity) {} }
        for try await buffer in body { try await writer.write(buffer) }
        try await writer.finish(nil)
      })
  }

  /// Pipes a client WebSocket to the agent's WebSocket at `agentPath` until either side closes.
  func pipe(
    sandboxId id: String, agentPath: String, inbound: WebSocketInboundStream,
    outbound: WebSocketOutboundWriter
  ) async throws {
    let agent = try await agent(id, scheme: "ws")
    let activity = await ActivityLease(service: service, sandboxId: id)
    defer { withExtendedLifetime(activity) {} }
    var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20)
    if let value = agent.authorization { configuration.additionalHeaders[.authorization] = value }
    _ = try await WebSocketClient.connect(
      url: agent.url + agentPath, configuration: configuration, logger: logger
    ) { agentInbound, agentOutbound, _ in
      let upstream = Task {
        do {
          for try await message in inbound.messages(maxSize: 16 << 20) {
            try await agentOutbound.write(message.outboundFrame)
            await service.touch(id)
          }
        } catch {}
        try? await agentOutbound.close(.normalClosure, reason: nil)
      }
      do {
        for try await message in agentInbound.messages(maxSize: 16 << 20) {
          try await outbound.write(message.outboundFrame)
        }
      } catch {}
      try? await outbound.close(.normalClosure, reason: nil)
      upstream.cancel()
    }
  }
}

extension WebSocketMessage {
  var outboundFrame: WebSocketOutboundWriter.OutboundFrame {
    switch self {
    case .text(let text): .text(text)
    case .binary(let buffer): .binary(buffer)
    }
  }
}

/// Counts as an open connection of a sandbox from creation until it is released: when the
/// last reference goes, wherever that happens (a response written, a client gone).
final class ActivityLease: Sendable {
  let service: SandboxService
  let sandboxId: String

  init(service: SandboxService, sandboxId: String) async {
    self.service = service
    self.sandboxId = sandboxId
    await service.connectionOpened(sandboxId)
  }

  deinit {
    Task { [service, sandboxId] in await service.connectionClosed(sandboxId) }
  }
}
