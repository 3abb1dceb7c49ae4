import AtelierAgentAPI
import AtelierHTTP
import Hummingbird
import HummingbirdWebSocket
import Logging
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// Who this agent is: set at boot from the kernel command line, changed after a restore.
final class AgentIdentity: Sendable {
  private let value: Mutex<(sandboxId: String, hostname: String?)>
  let startedAt = ContinuousClock.now

  init(sandboxId: String, hostname: String?) {
    value = Mutex((sandboxId, hostname))
  }

  var sandboxId: String { value.withLock { $0.sandboxId } }
  var hostname: String? { value.withLock { $0.hostname } }

  func change(sandboxId: String, hostname: String?) {
    value.withLock { $0 = (sandboxId, hostname ?? $0.hostname) }
  }
}

typealias AgentContext = BasicWebSocketRequestContext

/// The agent's HTTP and WebSocket routes. The manager exposes each one unchanged under
/// `/api/sandboxes/{id}/…`.
struct AgentRoutes: Sendable {
  let identity: AgentIdentity
  let supervisor: ServiceSupervisor
  let terminals: TerminalService
  let logger: Logger

  func register(on router: Router<AgentContext>) {
    router.get("/health") { _, _ in
      let uptime = ContinuousClock.now - identity.startedAt
      return jsonResponse(
        AgentHealth(
          status: "ok", sandboxId: identity.sandboxId, hostname: identity.hostname,
          uptime: Double(uptime.components.seconds) + Double(uptime.components.attoseconds) / 1e18))
    }
    router.post("/system/resume") { request, _ in
      let body = try await request.decodeJSON(GuestResumeRequest.self)
      GuestInit.resume(body, identity: identity, logger: logger)
      return jsonResponse(
        AgentHealth(
          status: "ok", sandboxId: identity.sandboxId, hostname: identity.hostname, uptime: 0))
    }
    router.post("/system/poweroff") { _, _ in
      // Answer first, then power off: the caller waits for the VMM process to exit.
      Task {
        try? await Task.sleep(for: .milliseconds(100))
        if getpid() == 1 { GuestInit.powerOff() }
      }
      return Response(status: .accepted)
    }
    registerExec(on: router)
    registerFiles(on: router)
    registerServices(on: router)
    registerGit(on: router)
    registerTerminals(on: router)
    router.get("/metrics") { _, _ in jsonResponse(await MetricsService.collect()) }
  }

  func registerExec(on router: Router<AgentContext>) {
    router.post("/exec") { request, _ in
      jsonResponse(try await ExecService.run(try await request.decodeJSON(ExecRequest.self)))
    }
    router.post("/exec/batch") { request, _ in
      jsonResponse(try await ExecService.batch(try await request.decodeJSON(ExecBatchRequest.self)))
    }
    let logger = self.logger
    router.ws("/exec/stream") { inbound, outbound, _ in
      try await ExecStream.handle(inbound: inbound, outbound: outbound, logger: logger)
    }
  }

  func registerFiles(on router: Router<AgentContext>) {
    router.get("/files") { request, _ in
      try FileService.download(path: request.uri.queryParameters.get("path"))
    }
    router.put("/files") { request, _ in
      let query = request.uri.queryParameters
      return jsonResponse(
        try await FileService.upload(
          path: query.get("path"), mode: query.get("mode"), owner: query.get("owner"),
          body: request.body),
        status: .created)
    }
    router.delete("/files") { request, _ in
      let query = request.uri.queryParameters
      try FileService.delete(path: query.get("path"), recursive: query.get("recursive") == "true")
      return Response(status: .noContent)
    }
    router.get("/files/list") { request, _ in
      jsonResponse(try FileService.list(path: request.uri.queryParameters.get("path")))
    }
    router.get("/files/stat") { request, _ in
      jsonResponse(try FileService.describe(path: request.uri.queryParameters.get("path")))
    }
    router.post("/files/mkdir") { request, _ in
      jsonResponse(
        try FileService.mkdir(try await request.decodeJSON(MkdirRequest.self)), status: .created)
    }
    router.post("/files/write") { request, _ in
      jsonResponse(try FileService.write(try await request.decodeJSON(WriteFilesRequest.self)))
    }
    router.get("/files/archive") { request, _ in
      try FileService.archive(path: request.uri.queryParameters.get("path"))
    }
    router.put("/files/archive") { request, _ in
      let query = request.uri.queryParameters
      return jsonResponse(
        try await FileService.extract(
          path: query.get("path"), owner: query.get("owner"), body: request.body),
        status: .created)
    }
  }

  func registerServices(on router: Router<AgentContext>) {
    let supervisor = self.supervisor
    for kind in [ServiceSupervisor.Kind.service, .dev] {
      let prefix = kind == .service ? "/services" : "/dev"
      router.get(RouterPath(prefix)) { _, _ in jsonResponse(await supervisor.list(kind: kind)) }
      router.get(RouterPath("\(prefix)/{name}")) { _, context in
        jsonResponse(
          try await supervisor.status(of: try context.parameters.require("name"), kind: kind))
      }
      router.get(RouterPath("\(prefix)/{name}/logs")) { request, context in
        let query = request.uri.queryParameters
        let offset = Int64(query.get("offset") ?? "0") ?? 0
        let limit = Int(query.get("limit") ?? "65536") ?? 65536
        guard offset >= 0, limit > 0 else {
          throw APIError.badRequest("offset and limit must be positive")
        }
        return jsonResponse(
          try await supervisor.logs(
            try context.parameters.require("name"), kind: kind, offset: offset, limit: limit))
      }
      router.post(RouterPath("\(prefix)/{name}/stop")) { _, context in
        let name = try context.parameters.require("name")
        _ = try await supervisor.status(of: name, kind: kind)
        try await supervisor.stop(name)
        return jsonResponse(try await supervisor.status(of: name, kind: kind))
      }
    }
    router.put("/services/{name}") { request, context in
      let name = try context.parameters.require("name")
      try await supervisor.define(
        name, kind: .service, definition: try await request.decodeJSON(ServiceDefinition.self))
      return jsonResponse(try await supervisor.status(of: name, kind: .service))
    }
    router.delete("/services/{name}") { _, context in
      try await supervisor.remove(try context.parameters.require("name"), kind: .service)
      return Response(status: .noContent)
    }
    router.post("/services/{name}/start") { _, context in
      let name = try context.parameters.require("name")
      _ = try await supervisor.status(of: name, kind: .service)
      try await supervisor.start(name)
      return jsonResponse(try await supervisor.status(of: name, kind: .service))
    }
    router.post("/services/{name}/restart") { _, context in
      let name = try context.parameters.require("name")
      _ = try await supervisor.status(of: name, kind: .service)
      try await supervisor.restart(name)
      return jsonResponse(try await supervisor.status(of: name, kind: .service))
    }
    router.post("/dev/{name}/start") { request, context in
      let name = try context.parameters.require("name")
      let body = try await request.decodeJSON(DevCommandRequest.self)
      if let port = body.port, !(1...65535).contains(port) {
        throw APIError.badRequest("port must be 1–65535")
      }
      let workdir =
        body.workdir ?? (directoryExists(GitService.workspace) ? GitService.workspace : nil)
      try await supervisor.define(
        name, kind: .dev,
        definition: ServiceDefinition(
          command: body.command, cwd: workdir, env: body.env, port: body.port))
      try await supervisor.stop(name)
      try await supervisor.start(name)
      return jsonResponse(try await supervisor.status(of: name, kind: .dev))
    }
  }

  func registerGit(on router: Router<AgentContext>) {
    router.get("/git/status") { request, _ in
      jsonResponse(
        try await GitService.status(repoPath: request.uri.queryParameters.get("repoPath")))
    }
    router.get("/git/diff") { request, _ in
      jsonResponse(try await GitService.diff(repoPath: request.uri.queryParameters.get("repoPath")))
    }
    router.post("/git/commit") { request, _ in
      jsonResponse(try await GitService.commit(try await request.decodeJSON(GitRepoRequest.self)))
    }
    router.post("/git/push") { request, _ in
      jsonResponse(try await GitService.push(try await request.decodeJSON(GitRepoRequest.self)))
    }
  }

  func registerTerminals(on router: Router<AgentContext>) {
    let terminals = self.terminals
    router.get("/terminal/sessions") { _, _ in jsonResponse(terminals.list()) }
    router.post("/terminal/sessions") { request, _ in
      jsonResponse(
        try terminals.create(try await request.decodeJSON(TerminalCreateRequest.self)),
        status: .created)
    }
    router.get("/terminal/sessions/{sid}") { _, context in
      jsonResponse(try terminals.session(try context.parameters.require("sid")).info)
    }
    router.delete("/terminal/sessions/{sid}") { _, context in
      try await terminals.delete(try context.parameters.require("sid"))
      return Response(status: .noContent)
    }
    router.ws("/terminal/sessions/{sid}/ws") { inbound, outbound, context in
      let id = try context.requestContext.parameters.require("sid")
      try await terminals.serve(id, inbound: inbound, outbound: outbound)
    }
  }
}
