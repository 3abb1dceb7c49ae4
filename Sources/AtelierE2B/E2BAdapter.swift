import AtelierManager
import AtelierStore
import Hummingbird
import Logging

/// The E2B-compatible API on the manager's port: E2B's control plane (`/sandboxes`,
/// `/v2/sandboxes`, with `X-API-KEY`) and, for requests naming a sandbox in
/// `E2b-Sandbox-Id`, its in-sandbox daemon envd (with the sandbox's `X-Access-Token`), both
/// mapped onto Atelier's sandboxes and agents.
public struct E2BAdapter<Context: RequestContext>: Sendable {
  let service: SandboxService
  let records: E2BRecords
  let keys: E2BKeyVerifier
  let logger: Logger

  public init(
    service: SandboxService, database: AtelierDatabase, keys: E2BKeyVerifier, logger: Logger
  ) {
    self.service = service
    self.records = E2BRecords(database: database)
    self.keys = keys
    self.logger = logger
  }

  /// The control plane's routes, at the root of `router`, with E2B's errors and key check.
  public func addControlPlane(to router: Router<Context>) {
    let group = router.group()
      .add(middleware: E2BErrorMiddleware<Context>())
      .add(middleware: E2BKeyMiddleware<Context>(keys: keys))
    ControlPlane<Context>(service: service, records: records, views: SandboxViews())
      .addRoutes(to: group)
  }

  /// Router-wide middleware sending envd requests (those with `E2b-Sandbox-Id`) to envd's
  /// routes; add it before anything that would route them as the manager's own.
  public func envdMiddleware() -> EnvdDispatchMiddleware<Context> {
    let gate = EnvdGate(service: service, records: records)
    let routes = EnvdRoutes<Context>(gate: gate, service: service, logger: logger)
    return EnvdDispatchMiddleware(responder: routes.buildResponder())
  }
}
