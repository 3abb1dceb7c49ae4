import ArgumentParser
import AtelierAgentAPI
import AtelierCore
import Foundation

struct SandboxCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "sandbox", abstract: "Create, inspect, use and delete sandboxes.",
    subcommands: [
      Create.self, List.self, Get.self, Exec.self, Remove.self, Shell.self, Copy.self, Logs.self,
    ])

  struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Create a sandbox and wait until it runs.")
    @Option(help: "Image name.") var image: String?
    @Option(help: "Virtual CPUs (1–8).") var vcpus: Int?
    @Option(name: .customLong("memory"), help: "Memory in MiB (128–16384).") var memoryMb: Int?
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let sandbox = try await client.post(
        "/api/sandboxes", CreateSandboxRequest(image: image, vcpus: vcpus, memoryMb: memoryMb),
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
