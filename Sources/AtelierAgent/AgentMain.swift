import AtelierAgentAPI
import AtelierProcess
import Hummingbird
import HummingbirdWebSocket
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The agent's start: init (when PID 1), then the HTTP/1.1 JSON + WebSocket API on port 9998.
/// Options for running it on a host (tests): `--listen HOST:PORT`, `--state DIR` (service
/// logs and definitions), `--key-file PATH` (a key drive image, instead of finding the drive).
public enum AgentMain {
  public static func run(arguments: [String]) async throws {
    func option(_ name: String) -> String? {
      arguments.firstIndex(of: name).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
    }
    LoggingSystem.bootstrap { label in
      var handler = StreamLogHandler.standardError(label: label)
      handler.logLevel = .info
      return handler
    }
    var logger = Logger(label: "atelier.agent")
    signal(SIGPIPE, SIG_IGN)

    let isInit = getpid() == 1
    if isInit {
      setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1)
      GuestInit.mountEarlyFileSystems(logger: logger)
      GuestInit.hardenKernel(logger: logger)
      GuestInit.growRootFileSystem(logger: logger)
    }
    let boot = GuestBootParameters(commandLine: readTextFile("/proc/cmdline") ?? "")
    if isInit, let boot {
      GuestInit.setHostname(boot.hostname, logger: logger)
      GuestInit.configureNetwork(boot, logger: logger)
    }
    let identity = AgentIdentity(sandboxId: boot?.sandboxId ?? "local", hostname: boot?.hostname)
    logger[metadataKey: "sandbox"] = .string(identity.sandboxId)
    let key =
      option("--key-file").flatMap(KeyDrive.read) ?? (isInit ? KeyDrive.find(logger: logger) : nil)
    if key == nil && !isInit { logger.warning("no --key-file: every request will be refused") }

    var host = "0.0.0.0"
    var port = AgentProtocol.port
    if let value = option("--listen"), let colon = value.lastIndex(of: ":"),
      let number = Int(value[value.index(after: colon)...])
    {
      host = String(value[..<colon])
      port = number
    } else if let address = boot?.listen {
      // Where the guest also sits on a shared network, listen only on the private channel.
      host = address
    }
    if let vsockPort = boot?.vsockPort {
      VsockRelay.start(vsockPort: vsockPort, tcpPort: port, logger: logger)
    }

    let supervisor = ServiceSupervisor(
      stateDirectory: option("--state") ?? "/var/lib/atelier-agent", logger: logger)
    if isInit {
      // What was persisted (started, stopped or changed through the API) wins over what the
      // image declares: a declared service is persisted once it starts, and must not start twice.
      await supervisor.loadPersisted()
      await supervisor.loadDeclared()
    }
    let routes = AgentRoutes(
      identity: identity, keys: AgentKeyStore(key: key), supervisor: supervisor,
      terminals: TerminalService(logger: logger), guestServices: GuestServiceHub(logger: logger),
      logger: logger)
    logger.info("agent listening on \(host):\(port)", metadata: ["init": "\(isInit)"])
    guard isInit else {
      return try await makeApplication(routes: routes, host: host, port: port, logger: logger)
        .runService()
    }
    // PID 1 must not exit (the kernel panics): a listener that fails (its address not there
    // yet) is started again.
    while true {
      do {
        try await makeApplication(routes: routes, host: host, port: port, logger: logger)
          .runService()
      } catch {
        logger.error("agent listener failed, again in 1 s: \(error)")
      }
      try? await Task.sleep(for: .seconds(1))
    }
  }

  /// The router with every route of the table, behind the key.
  static func makeRouter(routes: AgentRoutes) -> Router<AgentContext> {
    let router = Router(context: AgentContext.self)
    routes.register(on: router)
    return router
  }

  static func makeApplication(
    routes: AgentRoutes, host: String, port: Int, logger: Logger
  ) -> some ApplicationProtocol {
    let router = makeRouter(routes: routes)
    return Application(
      router: router,
      server: .http1WebSocketUpgrade(
        webSocketRouter: router, configuration: .init(maxFrameSize: 1 << 20)),
      configuration: .init(address: .hostname(host, port: port), serverName: "atelier-agent"),
      logger: logger)
  }
}
