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
  static func buildRouter(_ dependencies: Dependencies, logger: Logger) throws -> (
    Router<ManagerRequestContext>, RouteTable
  ) {
    let router = Router(context: ManagerRequestContext.self)
    let table = RouteTable()
    // Router-wide middleware runs for every request, routed or not, in this order.
    router.add(middleware: RequestIdMiddleware())
    router.add(middleware: ErrorMiddleware(routes: table))
    router.add(middleware: PathNormalizationMiddleware())
    // E2B's SDK: envd requests (by header) before any routing, its control plane at the root.
    let authenticator = Authenticator(
      database: dependencies.database,
      signer: try SessionSigner.load(path: dependencies.config.sessionKeyPath))
    let e2b = E2BAdapter<ManagerRequestContext>(
      service: dependencies.service, database: dependencies.database,
      keys: e2bKeys(authenticator), logger: logger)
    router.add(middleware: e2b.envdMiddleware())
    e2b.addControlPlane(to: router)
    let root = DocumentedRoutes(
      group: router.group(), prefix: "", table: table, requiresAuth: false)
    let authentication = AuthenticationMiddleware(authenticator: authenticator)
    let apiGroup = router.group("api").add(middleware: authentication)
    let api = DocumentedRoutes(group: apiGroup, prefix: "/api", table: table, requiresAuth: true)
    let webSockets = DocumentedRoutes(
      group: router.group("api").add(
        middleware: WebSocketAuthenticationMiddleware(authenticator: authenticator)),
      prefix: "/api", table: table, requiresAuth: true)
    var admin = DocumentedRoutes(
      group: apiGroup.group().add(middleware: AdminOnlyMiddleware()), prefix: "/api",
      table: table, requiresAuth: true)
    admin.requiresAdmin = true
    let auth = AuthController(database: dependencies.database, authenticator: authenticator)
    let publicAuth = DocumentedRoutes(
      group: router.group("auth"), prefix: "/auth", table: table, requiresAuth: false)
    auth.addPublicRoutes(to: publicAuth)
    if let github = try githubLogin(dependencies, signer: authenticator.signer) {
      GitHubController(login: github, sessions: auth).addPublicRoutes(to: publicAuth)
    }
    auth.addRoutes(
      to: DocumentedRoutes(
        group: router.group("auth").add(middleware: authentication), prefix: "/auth",
        table: table, requiresAuth: true))
    let users = UsersController(database: dependencies.database)
    users.addAdminRoutes(to: admin)
    users.addRoutes(to: api)

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
    system.addAdminRoutes(to: admin)
    SandboxesController(service: service).addRoutes(to: api)
    LifecycleController(service: service).addRoutes(to: api)
    SnapshotsController(service: service).addRoutes(to: api)
    AgentProxyController(service: service, proxy: AgentProxy(service: service, logger: logger))
      .addRoutes(to: api, webSockets: webSockets)
    document.set(
      OpenAPIDocument.make(
        routes: table.all, version: AtelierVersion.current,
        context: SchemaContext(
          limits: dependencies.config.limits,
          destinationLists: dependencies.drivers.network.enforcesDestinationLists)))
    return (router, table)
  }

  /// What opens the E2B API: an admin's API key. Sandboxes made through it have no owner yet
  /// (only admins see those), so members' keys are refused until they map onto owners.
  static func e2bKeys(_ authenticator: Authenticator) -> E2BKeyVerifier {
    E2BKeyVerifier { authenticator.principal(forKey: $0)?.role == .admin }
  }

  /// GitHub login when configured; it needs a list of who may log in.
  static func githubLogin(_ dependencies: Dependencies, signer: SessionSigner) throws
    -> GitHubLogin?
  {
    let settings = dependencies.config.github
    guard settings.isEnabled else { return nil }
    guard !settings.allowedUsers.isEmpty || !settings.allowedOrgs.isEmpty else {
      throw ConfigError(
        key: "ATELIER_GITHUB_ALLOWED_USERS", source: nil,
        message: "GitHub login needs allowed users or ATELIER_GITHUB_ALLOWED_ORGS")
    }
    return GitHubLogin(
      settings: settings, signer: signer,
      redirectURL: settings.redirectURL.isEmpty
        ? "\(dependencies.config.managerURL)/auth/github/callback" : settings.redirectURL,
      database: dependencies.database)
  }

  public static func buildApplication(_ dependencies: Dependencies, logger: Logger)
    throws -> some ApplicationProtocol
  {
    let (router, _) = try buildRouter(dependencies, logger: logger)
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
        "Atelier manager on \(config.managerURL) (the first admin's key: \(config.adminTokenPath))")
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
