import AtelierAgentAPI
import AtelierHTTP
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import Synchronization

/// A stand-in guest agent on a loopback port: what the manager calls during a sandbox's life
/// (health, exec, resume after a restore, guest services, power off). It answers as the sandbox it was booted
/// as until a resume tells it otherwise, as a restored agent does.
final class FakeAgent: Sendable {
  let port: Int
  private let identity: Mutex<String>
  private let server = Mutex<Task<Void, any Error>?>(nil)
  /// Called when the manager asks the guest to power off.
  let onPowerOff: @Sendable () -> Void

  var sandboxId: String { identity.withLock { $0 } }

  init(port: Int, sandboxId: String, onPowerOff: @escaping @Sendable () -> Void) {
    self.port = port
    identity = Mutex(sandboxId)
    self.onPowerOff = onPowerOff
  }

  func start() async throws {
    let router = Router(context: BasicWebSocketRequestContext.self)
    router.get("/health") { [self] _, _ in
      jsonResponse(AgentHealth(status: "ok", sandboxId: sandboxId, hostname: nil, uptime: 1))
    }
    router.post("/system/resume") { [self] request, _ in
      let body = try await request.decodeJSON(GuestResumeRequest.self)
      if let id = body.sandboxId { identity.withLock { $0 = id } }
      return jsonResponse(
        AgentHealth(status: "ok", sandboxId: sandboxId, hostname: body.hostname, uptime: 1))
    }
    router.post("/system/poweroff") { [self] _, _ in
      onPowerOff()
      return Response(status: .accepted)
    }
    router.put("/system/guest-services") { request, _ in
      let body = try await request.decodeJSON(GuestServicesRequest.self)
      return jsonResponse(
        GuestServicesStatus(
          ports: body.ports, maxTunnels: body.maxTunnels, activeTunnels: 0, idleTunnels: 0,
          refused: 0))
    }
    // One proxied route, answered as the agent would (to check who may reach the agent).
    router.get("/services") { _, _ in jsonResponse([ServiceStatus]()) }
    router.put("/system/environment") { request, _ in
      let body = try await request.decodeJSON(GuestEnvironmentRequest.self)
      return jsonResponse(GuestEnvironmentStatus(variables: body.env.count))
    }
    router.post("/exec") { request, _ in
      let body = try await request.decodeJSON(ExecRequest.self)
      return jsonResponse(
        ExecResult(
          exitCode: 0, stdout: body.command ?? body.argv?.joined(separator: " ") ?? "", stderr: "",
          durationMs: 1, truncated: false, timedOut: false))
    }
    // The streaming exec, as far as the manager's proxy needs: `started`, then every message
    // echoed until the client closes.
    router.ws("/exec/stream") { inbound, outbound, _ in
      try await outbound.write(.text(#"{"type":"started"}"#))
      for try await message in inbound.messages(maxSize: 1 << 20) {
        if case .text(let text) = message { try await outbound.write(.text(text)) }
      }
    }
    let (started, continuation) = AsyncStream.makeStream(of: Void.self)
    let app = Application(
      router: router, server: .http1WebSocketUpgrade(webSocketRouter: router),
      configuration: .init(address: .hostname("127.0.0.1", port: port)),
      onServerRunning: { _ in continuation.yield() }, logger: Self.quiet)
    server.withLock { $0 = Task { try await app.runService(gracefulShutdownSignals: []) } }
    for await _ in started { break }
  }

  static let quiet: Logger = {
    var logger = Logger(label: "fake-agent")
    logger.logLevel = .critical
    return logger
  }()

  func stop() async {
    let task = server.withLock { task -> Task<Void, any Error>? in
      defer { task = nil }
      return task
    }
    task?.cancel()
    _ = try? await task?.value
  }
}
