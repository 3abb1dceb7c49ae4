import AtelierAgentAPI
import AtelierHTTP
import Hummingbird
import HummingbirdWebSocket
import Logging
import Synchronization

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

/// What an HTTP handler answers; the route's success status comes from its table entry.
enum AgentReply: Sendable {
  case json(any Encodable & Sendable)
  /// A streamed body built by the handler (downloads, archives).
  case raw(Response)
  case empty
}

enum AgentHandler {
  case http(@Sendable (Request, AgentContext) async throws -> AgentReply)
  case webSocket(WebSocketDataHandler<WebSocketRouterContext<AgentContext>>)
}

/// The agent's routes, registered from `AgentOperations.all` and nothing else: each entry
/// gets the handler `handler(for:)` names for its id (an exhaustive switch), behind the key
/// middleware.
struct AgentRoutes: Sendable {
  let identity: AgentIdentity
  let keys: AgentKeyStore
  let supervisor: ServiceSupervisor
  let terminals: TerminalService
  let guestServices: GuestServiceHub
  let processes: ProcessTable
  let logger: Logger

  init(
    identity: AgentIdentity, keys: AgentKeyStore, supervisor: ServiceSupervisor,
    terminals: TerminalService, guestServices: GuestServiceHub,
    processes: ProcessTable = ProcessTable(), logger: Logger
  ) {
    self.identity = identity
    self.keys = keys
    self.supervisor = supervisor
    self.terminals = terminals
    self.guestServices = guestServices
    self.processes = processes
    self.logger = logger
  }

  func register(on router: Router<AgentContext>) {
    router.add(middleware: AgentKeyMiddleware(keys: keys))
    for operation in AgentOperations.all {
      let path = RouterPath(operation.path)
      switch handler(for: operation.id) {
      case .http(let handle):
        precondition(!operation.isWebSocket, "\(operation.id) is a WebSocket in the table")
        router.on(path, method: HTTPRequest.Method(rawValue: operation.method.rawValue)!) {
          request, context in
          Self.response(try await handle(request, context), for: operation)
        }
      case .webSocket(let handle):
        precondition(operation.isWebSocket && operation.method == .get, "\(operation.id)")
        router.ws(path, onUpgrade: handle)
      }
    }
  }

  static func response(_ reply: AgentReply, for operation: AgentOperation) -> Response {
    let status = HTTPResponse.Status(code: operation.status)
    switch reply {
    case .json(let value):
      assert(
        operation.response?.type.map { ObjectIdentifier($0) == ObjectIdentifier(type(of: value)) }
          == true, "\(operation.id) answers \(type(of: value)), not what the table says")
      return jsonResponse(value, status: status)
    case .raw(var response):
      response.status = status
      return response
    case .empty:
      return Response(status: status)
    }
  }

  /// The handler of each operation in the table.
  func handler(for id: AgentOperation.ID) -> AgentHandler {
    switch id {
    case .health: .http { _, _ in .json(health()) }
    case .systemResume: .http { request, _ in try await resume(request) }
    case .systemPowerOff: .http { _, _ in powerOff() }
    case .systemGuestServices:
      .http { request, _ in
        .json(
          try await guestServices.configure(try await request.decodeJSON(GuestServicesRequest.self))
        )
      }
    case .guestServiceTunnel:
      .webSocket { inbound, outbound, _ in
        try await guestServices.serveTunnel(inbound: inbound, outbound: outbound)
      }
    case .systemEnvironment: .http { request, _ in .json(try await setEnvironment(request)) }
    case .processStart: .http { request, _ in .raw(try await startProcess(request)) }
    case .processList: .http { _, _ in .json(processes.list()) }
    case .processEvents: .http { _, context in .raw(try processEvents(context)) }
    case .processInput:
      .http { request, context in
        try await processInput(request, context)
        return .empty
      }
    case .processCloseStdin:
      .http { _, context in
        try processes.process(try pid(context)).closeStdin()
        return .empty
      }
    case .processSignal:
      .http { request, context in
        try await processSignal(request, context)
        return .empty
      }
    case .processResize:
      .http { request, context in
        try await processResize(request, context)
        return .empty
      }
    case .exec:
      .http { request, _ in
        .json(try await ExecService.run(try await request.decodeJSON(ExecRequest.self)))
      }
    case .execBatch:
      .http { request, _ in
        .json(try await ExecService.batch(try await request.decodeJSON(ExecBatchRequest.self)))
      }
    case .execStream:
      .webSocket { [logger] inbound, outbound, _ in
        try await ExecStream.handle(inbound: inbound, outbound: outbound, logger: logger)
      }
    case .filesDownload:
      .http { request, _ in .raw(try FileService.download(path: request.query("path"))) }
    case .filesUpload: .http { request, _ in .json(try await upload(request)) }
    case .filesDelete:
      .http { request, _ in
        try FileService.delete(
          path: request.query("path"), recursive: request.query("recursive") == "true")
        return .empty
      }
    case .filesList:
      .http { request, _ in
        .json(try FileService.list(path: request.query("path"), depth: request.query("depth")))
      }
    case .filesMove:
      .http { request, _ in
        .json(try FileService.move(try await request.decodeJSON(MoveRequest.self)))
      }
    case .filesWatch: .http { request, _ in .raw(try watch(request)) }
    case .filesStat:
      .http { request, _ in .json(try FileService.describe(path: request.query("path"))) }
    case .filesMkdir:
      .http { request, _ in
        .json(try FileService.mkdir(try await request.decodeJSON(MkdirRequest.self)))
      }
    case .filesWrite:
      .http { request, _ in
        .json(try FileService.write(try await request.decodeJSON(WriteFilesRequest.self)))
      }
    case .archiveDownload:
      .http { request, _ in .raw(try FileService.archive(path: request.query("path"))) }
    case .archiveUpload:
      .http { request, _ in
        .json(
          try await FileService.extract(
            path: request.query("path"), owner: request.query("owner"), body: request.body))
      }
    case .servicesList: .http { _, _ in .json(await supervisor.list(kind: .service)) }
    case .serviceGet: .http { _, context in .json(try await status(context, .service)) }
    case .serviceDefine: .http { request, context in .json(try await define(request, context)) }
    case .serviceDelete:
      .http { _, context in
        try await supervisor.remove(try context.parameters.require("name"), kind: .service)
        return .empty
      }
    case .serviceStart: .http { _, context in .json(try await control(context, .start)) }
    case .serviceStop:
      .http { _, context in .json(try await control(context, .stop, kind: .service)) }
    case .serviceRestart: .http { _, context in .json(try await control(context, .restart)) }
    case .serviceLogs:
      .http { request, context in .json(try await logs(request, context, .service)) }
    case .devList: .http { _, _ in .json(await supervisor.list(kind: .dev)) }
    case .devGet: .http { _, context in .json(try await status(context, .dev)) }
    case .devStart: .http { request, context in .json(try await startDev(request, context)) }
    case .devStop: .http { _, context in .json(try await control(context, .stop, kind: .dev)) }
    case .devLogs: .http { request, context in .json(try await logs(request, context, .dev)) }
    case .gitStatus:
      .http { request, _ in .json(try await GitService.status(repoPath: request.query("repoPath")))
      }
    case .gitDiff:
      .http { request, _ in .json(try await GitService.diff(repoPath: request.query("repoPath"))) }
    case .gitCommit:
      .http { request, _ in
        .json(try await GitService.commit(try await request.decodeJSON(GitRepoRequest.self)))
      }
    case .gitPush:
      .http { request, _ in
        .json(try await GitService.push(try await request.decodeJSON(GitRepoRequest.self)))
      }
    case .metrics: .http { _, _ in .json(await MetricsService.collect()) }
    case .terminalsList: .http { _, _ in .json(terminals.list()) }
    case .terminalCreate:
      .http { request, _ in
        .json(try terminals.create(try await request.decodeJSON(TerminalCreateRequest.self)))
      }
    case .terminalGet:
      .http { _, context in .json(try terminals.session(try context.parameters.require("sid")).info)
      }
    case .terminalDelete:
      .http { _, context in
        try await terminals.delete(try context.parameters.require("sid"))
        return .empty
      }
    case .terminalAttach:
      .webSocket { inbound, outbound, context in
        let id = try context.requestContext.parameters.require("sid")
        try await terminals.serve(id, inbound: inbound, outbound: outbound)
      }
    }
  }
}

extension Request {
  func query(_ name: String) -> String? { uri.queryParameters.get(name) }
}
