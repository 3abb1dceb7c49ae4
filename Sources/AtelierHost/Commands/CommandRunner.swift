import AtelierProcess
import Foundation
import Logging

/// One shell-out: a program, its arguments and optional standard input.
public struct Command: Sendable, Equatable, CustomStringConvertible {
  public var executable: String
  public var arguments: [String]
  public var input: [UInt8]?
  public var environment: [String: String]
  public var workingDirectory: String?
  public var timeout: Duration?

  public init(
    _ executable: String, _ arguments: [String], input: [UInt8]? = nil,
    environment: [String: String] = [:], workingDirectory: String? = nil,
    timeout: Duration? = .seconds(600)
  ) {
    self.executable = executable
    self.arguments = arguments
    self.input = input
    self.environment = environment
    self.workingDirectory = workingDirectory
    self.timeout = timeout
  }

  public var description: String {
    ([executable] + arguments).map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
  }
}

public struct CommandOutput: Sendable {
  public var exitCode: Int32
  public var stdout: String
  public var stderr: String
}

/// A command that exited non-zero (or could not start); stderr says why.
public struct CommandFailure: Error, CustomStringConvertible, Sendable {
  public var command: String
  public var exitCode: Int32
  public var stderr: String
  public var description: String {
    let detail = stderr.trimmingCharacters(in: .whitespacesAndNewlines)
    let tail = detail.split(separator: "\n").suffix(5).joined(separator: " | ")
    return "`\(command)` failed (exit \(exitCode))" + (tail.isEmpty ? "" : ": \(tail)")
  }
}

/// The seam for every shell-out (ip, iptables, lvcreate, qemu-img, mkfs…): tests of drivers
/// that cannot run here replace it and check the exact command lines.
public protocol CommandRunning: Sendable {
  /// Runs to completion; a non-zero exit throws `CommandFailure`.
  @discardableResult
  func run(_ command: Command) async throws -> CommandOutput
}

extension CommandRunning {
  @discardableResult
  public func run(_ executable: String, _ arguments: String...) async throws -> CommandOutput {
    try await run(Command(executable, arguments))
  }

  /// Runs and returns the output whatever the exit code.
  public func probe(_ command: Command) async -> CommandOutput {
    do {
      return try await run(command)
    } catch let failure as CommandFailure {
      return CommandOutput(exitCode: failure.exitCode, stdout: "", stderr: failure.stderr)
    } catch {
      return CommandOutput(exitCode: -1, stdout: "", stderr: "\(error)")
    }
  }
}

/// Runs commands on this machine, logging each one. Programs named without a path are looked
/// up with `HostTools` (PATH, then the sbin folders a normal user's PATH lacks), and a missing
/// one fails with exit code 127 and a message naming the Debian package that provides it.
public struct SystemCommandRunner: CommandRunning {
  let logger: Logger
  let tools: HostTools

  public init(logger: Logger = Logger(label: "atelier.command"), tools: HostTools = HostTools()) {
    self.logger = logger
    self.tools = tools
  }

  @discardableResult
  public func run(_ command: Command) async throws -> CommandOutput {
    logger.debug("run \(command)")
    var environment = ProcessInfo.processInfo.environment
    environment["PATH"] = tools.pathValue
    for (key, value) in command.environment { environment[key] = value }
    let executable: String
    do {
      executable = try tools.require(command.executable)
    } catch let missing as MissingTool {
      throw CommandFailure(command: command.description, exitCode: 127, stderr: "\(missing)")
    }
    let result: RunResult
    do {
      result = try await ProcessRunner.run(
        SpawnOptions(
          executable: executable, arguments: command.arguments, environment: environment,
          workingDirectory: command.workingDirectory, newSession: true),
        input: command.input, timeout: command.timeout, outputLimit: 64 << 20)
    } catch let error as SpawnError {
      throw CommandFailure(command: command.description, exitCode: 127, stderr: "\(error)")
    }
    let output = CommandOutput(
      exitCode: result.exitCode, stdout: result.stdoutText, stderr: result.stderrText)
    guard result.exitCode == 0 else {
      let failure = CommandFailure(
        command: command.description, exitCode: result.exitCode,
        stderr: result.timedOut ? "timed out\n" + output.stderr : output.stderr)
      logger.debug("command failed: \(failure)")
      throw failure
    }
    return output
  }
}
