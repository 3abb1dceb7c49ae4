import AsyncHTTPClient
import AtelierAgentAPI
import AtelierCore
import AtelierHost
import Foundation
import Hummingbird
import NIOCore

/// `process.Process` on the agent's process table: a process started (or attached to) is a
/// stream of the agent's events as envd's (`start` first, then `data`, then `end`).
struct EnvdProcess<Context: RequestContext>: Sendable {
  let routes: EnvdRoutes<Context>

  func addRoutes(to router: Router<Context>) {
    routes.serverStream(router, "process.Process/Start", Envd.StartRequest.self) {
      request, call, sink in
      try await start(request, call, sink)
    }
    routes.serverStream(router, "process.Process/Connect", Envd.ConnectRequest.self) {
      request, call, sink in
      let pid = try await Self.pid(request.process, call)
      let response = try await call.agent.stream(.GET, "/processes/\(pid)/events")
      try await Self.relay(response, to: sink)
    }
    routes.unary(router, "process.Process/List", Envd.Empty.self) { _, call in
      try await list(call)
    }
    routes.unary(router, "process.Process/SendInput", Envd.SendInputRequest.self) {
      request, call in
      let pid = try await Self.pid(request.process, call)
      guard let data = request.input?.stdin ?? request.input?.pty else {
        throw ConnectError(.invalidArgument, "input needs stdin or pty")
      }
      try await call.agent.send(
        .POST, "/processes/\(pid)/input", body: ProcessInputRequest(data: data))
      return Envd.Empty()
    }
    routes.unary(router, "process.Process/CloseStdin", Envd.CloseStdinRequest.self) {
      request, call in
      let pid = try await Self.pid(request.process, call)
      try await call.agent.send(.POST, "/processes/\(pid)/close-stdin", body: String?.none)
      return Envd.Empty()
    }
    routes.unary(router, "process.Process/Update", Envd.UpdateRequest.self) { request, call in
      try await update(request, call)
    }
    routes.unary(router, "process.Process/SendSignal", Envd.SendSignalRequest.self) {
      request, call in
      let pid = try await Self.pid(request.process, call)
      try await call.agent.send(
        .POST, "/processes/\(pid)/signal",
        body: ProcessSignalRequest(signal: try Self.signal(request.signal)))
      return Envd.Empty()
    }
  }

  /// `Update`: a PTY's new size.
  func update(_ request: Envd.UpdateRequest, _ call: EnvdCall) async throws -> Envd.Empty {
    let pid = try await Self.pid(request.process, call)
    guard let cols = request.pty?.size?.cols?.value, let rows = request.pty?.size?.rows?.value
    else { throw ConnectError(.invalidArgument, "pty.size needs cols and rows") }
    try await call.agent.send(
      .POST, "/processes/\(pid)/resize", body: TerminalSize(cols: Int(cols), rows: Int(rows)))
    return Envd.Empty()
  }

  func start(_ request: Envd.StartRequest, _ call: EnvdCall, _ sink: FrameSink) async throws {
    guard let config = request.process, let cmd = config.cmd, !cmd.isEmpty else {
      throw ConnectError(.invalidArgument, "process.cmd is required")
    }
    let pty = try request.pty.map { pty -> TerminalSize in
      guard let cols = pty.size?.cols?.value, let rows = pty.size?.rows?.value else {
        throw ConnectError(.invalidArgument, "pty.size needs cols and rows")
      }
      return TerminalSize(cols: Int(cols), rows: Int(rows))
    }
    let body = ProcessStartRequest(
      argv: [cmd] + (config.args ?? []), env: config.envs,
      cwd: try config.cwd.map { try call.path($0) }, user: call.user, pty: pty,
      stdin: request.stdin, tag: request.tag)
    let response = try await call.agent.stream(
      .POST, "/processes", body: .bytes(ByteBuffer(bytes: try JSONEncoder().encode(body))))
    try await Self.relay(response, to: sink)
  }

  /// The agent's event lines as envd's messages, each sent as soon as its line is complete.
  static func relay(_ response: HTTPClientResponse, to sink: FrameSink) async throws {
    var pending = ByteBuffer()
    let decoder = JSONDecoder()
    for try await chunk in response.body {
      var chunk = chunk
      pending.writeBuffer(&chunk)
      while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
        let length = newline - pending.readableBytesView.startIndex
        let line = Data(pending.readBytes(length: length) ?? [])
        pending.moveReaderIndex(forwardBy: 1)
        guard !line.isEmpty else { continue }
        let frame = try decoder.decode(ProcessEventFrame.self, from: line)
        try sink.send(Envd.ProcessEventResponse(event: event(frame)))
      }
      pending.discardReadBytes()
    }
  }

  static func event(_ frame: ProcessEventFrame) -> Envd.ProcessEvent {
    switch frame.type {
    case .start:
      return Envd.ProcessEvent(start: .init(pid: frame.pid ?? 0))
    case .stdout: return Envd.ProcessEvent(data: .init(stdout: frame.data ?? ""))
    case .stderr: return Envd.ProcessEvent(data: .init(stderr: frame.data ?? ""))
    case .pty: return Envd.ProcessEvent(data: .init(pty: frame.data ?? ""))
    case .end:
      return Envd.ProcessEvent(
        end: .init(
          exitCode: frame.exitCode ?? -1, exited: frame.exited ?? false,
          status: frame.status ?? "", error: frame.error))
    }
  }

  func list(_ call: EnvdCall) async throws -> Envd.ListResponse {
    let processes = try await call.agent.json(
      .GET, "/processes", body: String?.none, as: [GuestProcess].self)
    return Envd.ListResponse(
      processes: processes.map { process in
        Envd.ProcessInfo(
          config: Envd.ProcessConfig(
            cmd: process.argv.first, args: Array(process.argv.dropFirst()), envs: process.env,
            cwd: process.cwd),
          pid: process.pid, tag: process.tag)
      })
  }

  /// The pid a selector names: given, or the process with that tag.
  static func pid(_ selector: Envd.ProcessSelector?, _ call: EnvdCall) async throws -> Int32 {
    if let pid = selector?.pid?.value {
      guard pid > 0, pid <= Int64(Int32.max) else {
        throw ConnectError(.invalidArgument, "pid \(pid) is out of range")
      }
      return Int32(pid)
    }
    guard let tag = selector?.tag else {
      throw ConnectError(.invalidArgument, "process needs a pid or a tag")
    }
    let processes = try await call.agent.json(
      .GET, "/processes", body: String?.none, as: [GuestProcess].self)
    guard let process = processes.first(where: { $0.tag == tag }) else {
      throw ConnectError(.notFound, "no process with tag \(tag)")
    }
    return process.pid
  }

  /// envd's signals (`SIGNAL_SIGKILL`, `SIGNAL_SIGTERM`, or their numbers) by the agent's names.
  static func signal(_ value: Envd.EnumValue?) throws -> String {
    switch (value?.name, value?.number) {
    case ("SIGNAL_SIGKILL", _), (_, 9): return "KILL"
    case ("SIGNAL_SIGTERM", _), (_, 15): return "TERM"
    default: throw ConnectError(.invalidArgument, "signal must be SIGNAL_SIGKILL or SIGNAL_SIGTERM")
    }
  }
}
