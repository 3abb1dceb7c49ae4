import ArgumentParser
import AtelierAgentAPI
import AtelierCore
import Foundation

struct SandboxCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sandbox", abstract: "Create, inspect, use and delete sandboxes.",
    subcommands: [
      Create.self, List.self, Get.self, Exec.self, Remove.self, Shell.self, Copy.self, Logs.self,
      Stop.self, Start.self, Restart.self, Pause.self, Resume.self, Set.self, Snapshot.self,
      Fork.self,
    ])

  struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Create a sandbox and wait until it runs.")
    @Option(help: "Image name.") var image: String?
    @Option(help: "Virtual CPUs (1–8).") var vcpus: Int?
    @Option(name: .customLong("memory"), help: "Memory in MiB (128–16384).") var memoryMb: Int?
    @Option(name: .customLong("disk"), help: "Disk size in GiB (default: the manager's).")
    var diskGb: Int?
    @Option(help: "Restore this snapshot instead of booting an image.") var snapshot: String?
    @Option(help: "Idle seconds before --on-idle happens.") var timeout: Int?
    @Option(help: "pause or stop.") var onIdle: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let sandbox = try await client.post(
        "/api/sandboxes",
        CreateSandboxRequest(
          image: image, vcpus: vcpus, memoryMb: memoryMb, snapshot: snapshot,
          timeoutSeconds: timeout,
          onIdle: try onIdle.map(parseIdleAction), diskGb: diskGb),
        as: SandboxInfo.self)
      if json { return try printJSON(sandbox) }
      let total = sandbox.timings.map { " in \($0.totalMs) ms" } ?? ""
      print("\(sandbox.id) \(sandbox.status.rawValue)\(total)")
    }
  }

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "list", abstract: "List sandboxes.")
    @Option(help: "Only this status.") var status: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let query =
        status.map {
          "?status=\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? $0)"
        } ?? ""
      let sandboxes = try await client.get("/api/sandboxes\(query)", as: [SandboxInfo].self)
      if json { return try printJSON(sandboxes) }
      printTable(
        ["ID", "STATUS", "IMAGE", "VCPUS", "MEMORY", "CREATED"],
        sandboxes.map {
          [
            $0.id, $0.status.rawValue, $0.image, "\($0.vcpus)", "\($0.memoryMb) MiB",
            ISO8601.format($0.createdAt),
          ]
        })
    }
  }

  struct Get: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show one sandbox.")
    @Argument(help: "Sandbox id.") var id: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let sandbox = try await client.get("/api/sandboxes/\(id)", as: SandboxInfo.self)
      if json { return try printJSON(sandbox) }
      var rows = [
        ["id", sandbox.id], ["status", sandbox.status.rawValue], ["image", sandbox.image],
        ["vcpus", "\(sandbox.vcpus)"], ["memory", "\(sandbox.memoryMb) MiB"],
        ["disk", sandbox.diskGb.map { "\($0) GiB" } ?? "-"],
        ["hostname", sandbox.hostname], ["created", ISO8601.format(sandbox.createdAt)],
      ]
      if let timings = sandbox.timings {
        rows.append([
          "timings",
          "clone \(timings.cloneMs) ms, boot \(timings.bootMs) ms, agent \(timings.agentMs) ms, total \(timings.totalMs) ms",
        ])
      }
      if let error = sandbox.error { rows.append(["error", error]) }
      for row in rows {
        print("\(row[0].padding(toLength: 9, withPad: " ", startingAt: 0)) \(row[1])")
      }
    }
  }

  struct Exec: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run a command in a sandbox; exits with the command's exit code.",
      usage: "atelier sandbox exec <id> [--user U] [--cwd DIR] [--timeout MS] -- <command> [args…]")
    @Argument(help: "Sandbox id.") var id: String
    @Option(help: "Run as this user (default: dev where it exists, else root).") var user: String?
    @Option(help: "Working directory.") var cwd: String?
    @Option(name: .customLong("timeout"), help: "Kill the command after this many milliseconds.")
    var timeoutMs: Int?
    @Option(name: .customLong("env"), help: "KEY=VALUE, repeatable.") var environment: [String] = []
    @Argument(parsing: .postTerminator, help: "The command and its arguments.") var command:
      [String] = []

    func run() async throws {
      guard !command.isEmpty else {
        throw CLIError("no command given: atelier sandbox exec ID -- cmd args…")
      }
      var env: [String: String] = [:]
      for pair in environment {
        guard let equals = pair.firstIndex(of: "=") else {
          throw CLIError("--env takes KEY=VALUE, got \(pair)")
        }
        env[String(pair[..<equals])] = String(pair[pair.index(after: equals)...])
      }
      let client = try ManagerClient.make(config: try loadConfig())
      let result = try await client.post(
        "/api/sandboxes/\(id)/exec",
        ExecRequest(
          argv: command, env: env.isEmpty ? nil : env, cwd: cwd, timeoutMs: timeoutMs, user: user),
        as: ExecResult.self)
      FileHandle.standardOutput.write(Data(result.stdout.utf8))
      FileHandle.standardError.write(Data(result.stderr.utf8))
      if result.exitCode != 0 { throw ExitCode(result.exitCode) }
    }
  }

  struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "rm", abstract: "Delete sandboxes.")
    @Argument(help: "Sandbox ids.") var ids: [String]

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      for id in ids {
        _ = try await client.send(.DELETE, "/api/sandboxes/\(id)")
        print("deleted \(id)")
      }
    }
  }
}

func parseIdleAction(_ text: String) throws -> IdleAction {
  guard let action = IdleAction(rawValue: text) else {
    throw CLIError("--on-idle takes pause or stop")
  }
  return action
}

/// `atelier sandbox stop|start|restart|pause|resume ID…`
protocol TransitionCommand: AsyncParsableCommand {
  static var action: String { get }
  var ids: [String] { get }
}

extension TransitionCommand {
  func run() async throws {
    let client = try ManagerClient.make(config: try loadConfig())
    for id in ids {
      let sandbox = try await client.decode(
        try await client.send(.POST, "/api/sandboxes/\(id)/\(Self.action)"), as: SandboxInfo.self)
      print("\(sandbox.id) \(sandbox.status.rawValue)")
    }
  }
}

extension SandboxCommand {
  struct Stop: TransitionCommand {
    static let configuration = CommandConfiguration(
      abstract: "Stop sandboxes (their disks are kept).")
    static let action = "stop"
    @Argument(help: "Sandbox ids.") var ids: [String]
  }
  struct Start: TransitionCommand {
    static let configuration = CommandConfiguration(abstract: "Start stopped sandboxes.")
    static let action = "start"
    @Argument(help: "Sandbox ids.") var ids: [String]
  }
  struct Restart: TransitionCommand {
    static let configuration = CommandConfiguration(abstract: "Stop, then start.")
    static let action = "restart"
    @Argument(help: "Sandbox ids.") var ids: [String]
  }
  struct Pause: TransitionCommand {
    static let configuration = CommandConfiguration(abstract: "Freeze sandboxes in memory.")
    static let action = "pause"
    @Argument(help: "Sandbox ids.") var ids: [String]
  }
  struct Resume: TransitionCommand {
    static let configuration = CommandConfiguration(abstract: "Thaw paused sandboxes.")
    static let action = "resume"
    @Argument(help: "Sandbox ids.") var ids: [String]
  }

  struct Set: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change a sandbox's idle policy.")
    @Argument(help: "Sandbox id.") var id: String
    @Option(help: "Idle seconds before --on-idle happens (0: never).") var timeout: Int?
    @Option(help: "pause or stop.") var onIdle: String?

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let body = UpdateSandboxRequest(
        timeoutSeconds: timeout, onIdle: try onIdle.map(parseIdleAction))
      let sandbox = try await client.decode(
        try await client.send(.PATCH, "/api/sandboxes/\(id)", body: try JSONEncoder().encode(body)),
        as: SandboxInfo.self)
      print(
        "\(sandbox.id) idle: \(sandbox.timeoutSeconds.map { "\($0) s then \(sandbox.onIdle?.rawValue ?? "pause")" } ?? "never")"
      )
    }
  }

  struct Snapshot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Snapshot a running sandbox's memory and disk (restore with create --snapshot).")
    @Argument(help: "Sandbox id.") var id: String
    @Option(help: "A name for the snapshot.") var name: String?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let snapshot = try await client.post(
        "/api/sandboxes/\(id)/snapshots", SnapshotRequest(name: name), as: SnapshotInfo.self)
      if json { return try printJSON(snapshot) }
      print("\(snapshot.id) \(snapshot.name) (\(snapshot.sizeBytes >> 20) MiB)")
    }
  }

  struct Fork: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Make running copies of a sandbox that continue from its current state.")
    @Argument(help: "Sandbox id.") var id: String
    @Option(help: "How many copies (1–16).") var count = 1
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let forks = try await client.post(
        "/api/sandboxes/\(id)/fork", ForkRequest(count: count), as: ForkResponse.self)
      if json { return try printJSON(forks) }
      for sandbox in forks.sandboxes { print("\(sandbox.id) \(sandbox.status.rawValue)") }
    }
  }
}
