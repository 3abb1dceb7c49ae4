import AtelierAgentAPI
import Hummingbird
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// The in-guest agent: init (when PID 1) and an HTTP/1.1 JSON API on port 9998.
/// `--listen HOST:PORT` overrides the address (for running it on a host in tests).
let arguments = CommandLine.arguments
var listenHost = "0.0.0.0"
var listenPort = AgentProtocol.port
if let index = arguments.firstIndex(of: "--listen"), index + 1 < arguments.count {
  let value = arguments[index + 1]
  if let colon = value.lastIndex(of: ":"), let port = Int(value[value.index(after: colon)...]) {
    listenHost = String(value[..<colon])
    listenPort = port
  }
}

LoggingSystem.bootstrap { label in
  var handler = StreamLogHandler.standardError(label: label)
  handler.logLevel = .info
  return handler
}
var logger = Logger(label: "atelier.agent")
signal(SIGPIPE, SIG_IGN)

let isInit = getpid() == 1
if isInit { GuestInit.mountEarlyFileSystems(logger: logger) }
let bootParameters = GuestBootParameters(commandLine: readTextFile("/proc/cmdline") ?? "")
if isInit, let bootParameters {
  GuestInit.setHostname(bootParameters.hostname, logger: logger)
  GuestInit.configureNetwork(bootParameters, logger: logger)
}
let identity = AgentIdentity(
  sandboxId: bootParameters?.sandboxId ?? "local",
  hostname: bootParameters?.hostname)
logger[metadataKey: "sandbox"] = .string(identity.sandboxId)

let router = Router()
AgentRoutes(identity: identity).register(on: router)
let app = Application(
  router: router,
  configuration: .init(
    address: .hostname(listenHost, port: listenPort), serverName: "atelier-agent"),
  logger: logger)
logger.info("agent listening on \(listenHost):\(listenPort)", metadata: ["init": "\(isInit)"])
try await app.runService()
