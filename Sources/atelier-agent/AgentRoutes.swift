import AtelierAgentAPI
import AtelierHTTP
import Hummingbird

#if canImport(Glibc)
  import Glibc
#endif

/// Who this agent is; set at boot from the kernel command line.
struct AgentIdentity: Sendable {
  var sandboxId: String
  var hostname: String?
  let startedAt = ContinuousClock.now
}

struct AgentRoutes: Sendable {
  let identity: AgentIdentity

  func register(on router: Router<BasicRequestContext>) {
    router.get("/health") { _, _ in
      let uptime = ContinuousClock.now - identity.startedAt
      return jsonResponse(
        AgentHealth(
          status: "ok", sandboxId: identity.sandboxId, hostname: identity.hostname,
          uptime: Double(uptime.components.seconds)
            + Double(uptime.components.attoseconds) / 1e18))
    }
    router.post("/exec") { request, _ in
      let body = try await request.decodeJSON(ExecRequest.self)
      return jsonResponse(try await ExecService.run(body))
    }
    router.post("/system/poweroff") { _, _ in
      // Answer first, then power off: the caller waits for the VMM process to exit.
      Task {
        try? await Task.sleep(for: .milliseconds(100))
        if getpid() == 1 { GuestInit.powerOff() }
      }
      return Response(status: .accepted)
    }
  }
}
