import AtelierAgentAPI
import AtelierProcess
import Hummingbird
import HummingbirdWebSocket
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The in-guest agent: init (when PID 1) and an HTTP/1.1 JSON + WebSocket API on port 9998.
/// `--listen HOST:PORT` overrides the address and `--state DIR` the folder for service logs
/// (for running it on a host in tests).
let arguments = CommandLine.arguments
func option(_ name: String) -> String? {
  arguments.firstIndex(of: name).flatMap { $0 + 1 < arguments.count ? arguments[$0 + 1] : nil }
}
var listenHost = "0.0.0.0"
var listenPort = AgentProtocol.port
if let value = option("--listen"), let colon = value.lastIndex(of: ":"),
  let port = Int(value[value.index(after: colon)...])
{
  listenHost = String(value[..<colon])
  listenPort = port
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
  GuestInit.growRootFileSystem(logger: logger)
}
let bootParameters = GuestBootParameters(commandLine: readTextFile("/proc/cmdline") ?? "")
if isInit, let bootParameters {
  GuestInit.setHostname(bootParameters.hostname, logger: logger)
  GuestInit.configureNetwork(bootParameters, logger: logger)
}
let identity = AgentIdentity(
  sandboxId: bootParameters?.sandboxId ?? "local", hostname: bootParameters?.hostname)
logger[metadataKey: "sandbox"] = .string(identity.sandboxId)

// Where the guest also sits on a shared network, listen only on the private channel.
if option("--listen") == nil, let address = bootParameters?.listen {
  listenHost = address
}
if let vsockPort = bootParameters?.vsockPort {
  VsockRelay.start(vsockPort: vsockPort, tcpPort: listenPort, logger: logger)
}

let supervisor = ServiceSupervisor(
  stateDirectory: option("--state") ?? "/var/lib/atelier-agent", logger: logger)
if isInit {
  // What was persisted (started, stopped or changed through the API) wins over what the
  // image declares: a declared service is persisted once it starts, and must not start twice.
  await supervisor.loadPersisted()
  await supervisor.loadDeclared()
}
let router = Router(context: AgentContext.self)
AgentRoutes(
  identity: identity, supervisor: supervisor, terminals: TerminalService(logger: logger),
  logger: logger
)
.register(on: router)
let app = Application(
  router: router,
  server: .http1WebSocketUpgrade(
    webSocketRouter: router, configuration: .init(maxFrameSize: 1 << 20)),
  configuration: .init(
    address: .hostname(listenHost, port: listenPort), serverName: "atelier-agent"),
  logger: logger)
logger.info("agent listening on \(listenHost):\(listenPort)", metadata: ["init": "\(isInit)"])
try await app.runService()
