import AtelierCore
import AtelierE2B
import AtelierHost
import AtelierManager
import AtelierStore
import Hummingbird
import HummingbirdWebSocket
import Logging
import ServiceLifecycle

/// The manager's HTTP server, assembled the Hummingbird way: one router for HTTP and
/// WebSocket routes, controllers that register each handler with its documentation, middleware
/// for request ids, errors and path form on every route and authentication on `/api`, and the
/// background loops as services.
public enum ManagerServer {
  public struct Dependencies: Sendable {
    public var config: Config
    public var service: SandboxService
    public var database: AtelierDatabase
    public var drivers: HostDrivers
    public var qemuPath: String?
    public init(
      config: Config, service: SandboxService, database: AtelierDatabase, drivers: HostDrivers,
      qemuPath: String?
    ) {
      self.config = config
      self.service = service
      self.database = database
      self.drivers = drivers
      self.qemuPath = qemuPath
    }
  }

  /// The router with every route and middleware, and the table it was built from.
  static func buildRouter(_ dependencies: Dependencies, logger: Logger) -> (
    Router<ManagerRequestContext>, RouteTable
  ) {
    let router = Router(context: ManagerRequestContext.self)
    let table = RouteTable()
    // Router-wide middleware runs for every request, routed or not, in this order.
    router.add(middleware: RequestIdMiddleware())
    router.add(middleware: ErrorMiddleware(routes: table))
    router.add(middleware: PathNormalizationMiddleware())
    // E2B's SDK: envd requests (by header) before any routing, its control plane at the root.
    let e2b = E2BAdapter<ManagerRequestContext>(
      service: dependencies.service, database: dependencies.database,
      keys: e2bKeys(dependencies.database), logger: logger)
    router.add(middleware: e2b.envdMiddleware())
    e2b.addControlPlane(to: router)
    let root = DocumentedRoutes(
      group: router.group(), prefix: "", table: table, requiresAuth: false)
    let api = DocumentedRoutes(
      group: router.group("api").add(
        middleware: AuthenticationMiddleware(tokens: TokenVerifier(database: dependencies.database))
      ),
      prefix: "/api", table: table, requiresAuth: true)

    let service = dependencies.service
    let document = DocumentBox()
    let system = SystemController(
      service: service,
      health: HealthChecker(
        config: dependencies.config, drivers: dependencies.drivers,
        qemuPath: dependencies.qemuPath),
      document: document, heartbeat: .seconds(dependencies.config.eventsHeartbeatSeconds))
    system.addPublicRoutes(to: root)
    system.addRoutes(to: api)
    SandboxesController(service: service).addRoutes(to: api)
    LifecycleController(service: service).addRoutes(to: api)
    SnapshotsController(service: service).addRoutes(to: api)
    AgentProxyController(service: service, proxy: AgentProxy(service: service, logger: logger))
      .addRoutes(to: api)
    document.set(
      OpenAPIDocument.make(
        routes: table.all, version: AtelierVersion.current,
        context: SchemaContext(
          limits: dependencies.config.limits,
          destinationLists: dependencies.drivers.network.enforcesDestinationLists)))
    return (router, table)
  }

  /// What opens the E2B API: the manager's API tokens (the admin token) for now; the one
  /// place to point at per-user API keys.
  static func e2bKeys(_ database: AtelierDatabase) -> E2BKeyVerifier {
    let tokens = TokenVerifier(database: database)
    return E2BKeyVerifier { tokens.principal(for: $0) != nil }
  }

  public static func buildApplication(_ dependencies: Dependencies, logger: Logger)
    -> some ApplicationProtocol
  {
    let (router, _) = buildRouter(dependencies, logger: logger)
    let config = dependencies.config
    let service = dependencies.service
    var app = Application(
      router: router,
      server: .guardedHTTP1WebSocketUpgrade(
        webSocketRouter: router, configuration: .init(maxFrameSize: 1 << 20)),
      configuration: .init(
        address: .hostname(config.serverHost, port: config.serverPort), serverName: "atelier"),
      logger: logger)
    app.addServices(
      PeriodicService(name: "reconciler", every: .seconds(config.reconcileIntervalSeconds)) {
        await service.reconcile()
      },
      PeriodicService(name: "idle-reaper", every: .seconds(config.idleCheckSeconds)) {
        await service.reapIdle()
      },
      PeriodicService(name: "lifetime-reaper", every: .seconds(config.idleCheckSeconds)) {
        await service.reapExpired()
      })
    app.beforeServerStarts {
      let report = await service.reconcile()
      logger.info(
        "reconciled at start",
        metadata: [
          "adopted": "\(report.adopted.count)", "markedError": "\(report.markedError.count)",
          "abandoned": "\(report.abandonedCreates.count)",
          "killed": "\(report.killedProcesses.count)",
        ])
      logger.notice(
        "Atelier manager on \(config.managerURL) (admin token: \(config.adminTokenPath))")
    }
    return app
  }
}

/// A background loop (reconciler, idle reaper): `work` every `interval` until the application
/// shuts down.
struct PeriodicService: Service {
  let name: String
  let interval: Duration
  let work: @Sendable () async -> Void

  init(name: String, every interval: Duration, _ work: @escaping @Sendable () async -> Void) {
    self.name = name
    self.interval = interval
    self.work = work
  }

  func run() async throws {
    await cancelWhenGracefulShutdown {
      while !Task.isCancelled {
        try? await Task.sleep(for: interval)
        if Task.isCancelled { break }
        await work()
      }
    }
  }
}
