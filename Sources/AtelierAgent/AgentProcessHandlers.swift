import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import Hummingbird
import NIOCore

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// The handlers of the process table, the sandbox environment and watches.
extension AgentRoutes {
  func setEnvironment(_ request: Request) async throws -> GuestEnvironmentStatus {
    let body = try await request.decodeJSON(GuestEnvironmentRequest.self)
    if let problem = SandboxEnvironment.problem(body.env) { throw APIError.badRequest(problem) }
    SandboxEnvironmentStore.shared.replace(with: body.env)
    logger.info("sandbox environment set", metadata: ["variables": "\(body.env.count)"])
    return GuestEnvironmentStatus(variables: body.env.count)
  }

  func startProcess(_ request: Request) async throws -> Response {
    let body = try await request.decodeJSON(ProcessStartRequest.self)
    let (process, subscription) = try processes.start(body)
    logger.info(
      "process started", metadata: ["pid": "\(process.pid)", "pty": "\(body.pty != nil)"])
    return Self.eventStream(process, subscription)
  }

  func processEvents(_ context: AgentContext) throws -> Response {
    let process = try processes.process(try pid(context))
    return Self.eventStream(process, process.subscribe())
  }

  func processInput(_ request: Request, _ context: AgentContext) async throws {
    let process = try processes.process(try pid(context))
    let body = try await request.decodeJSON(ProcessInputRequest.self)
    guard let bytes = Data(base64Encoded: body.data) else {
      throw APIError.badRequest("data is not valid base64")
    }
    try await process.write(Array(bytes))
  }

  func processSignal(_ request: Request, _ context: AgentContext) async throws {
    let process = try processes.process(try pid(context))
    let body = try await request.decodeJSON(ProcessSignalRequest.self)
    guard let number = ExecStream.signalNumber(body.signal), (1...64).contains(number) else {
      throw APIError.badRequest("unknown signal \(body.signal)")
    }
    process.signal(number)
  }

  func processResize(_ request: Request, _ context: AgentContext) async throws {
    let process = try processes.process(try pid(context))
    try process.resize(try await request.decodeJSON(TerminalSize.self))
  }

  func pid(_ context: AgentContext) throws -> Int32 {
    let text = try context.parameters.require("pid")
    guard let pid = Int32(text), pid > 0 else { throw APIError.badRequest("pid must be a number") }
    return pid
  }

  func watch(_ request: Request) throws -> Response {
    let events = try DirectoryWatcher.watch(
      path: request.query("path"), recursive: request.query("recursive") == "true",
      includeEntry: request.query("includeEntry") == "true")
    return Self.lines(events) { _ in }
  }

  /// A process's events as JSON lines; each written frame's data is given back to its queue.
  /// When the client goes, the subscription ends (the process goes on).
  static func eventStream(_ process: TableProcess, _ subscription: ProcessSubscription)
    -> Response
  {
    lines(subscription.events) { frame in
      process.consumed(subscription.token, frame.data?.utf8.count ?? 0)
    }
  }

  /// Frames as JSON lines, each flushed as it comes.
  static func lines<Frames: AsyncSequence & Sendable>(
    _ frames: Frames, written: @escaping @Sendable (Frames.Element) -> Void
  ) -> Response where Frames.Element: Encodable & Sendable {
    let body = ResponseBody { writer in
      let encoder = JSONEncoder()
      for try await frame in frames {
        var line = try encoder.encode(frame)
        line.append(UInt8(ascii: "\n"))
        try await writer.write(ByteBuffer(bytes: line))
        written(frame)
      }
      try await writer.finish(nil)
    }
    return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
  }
}
