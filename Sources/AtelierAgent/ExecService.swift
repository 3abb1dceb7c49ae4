import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess

/// Runs commands for `/exec`: as the requested user, in its own process group, with capped
/// output and an optional timeout that kills the whole group.
enum ExecService {
  static func run(_ request: ExecRequest, outputLimit: Int = AgentProtocol.defaultOutputLimit)
    async throws -> ExecResult
  {
    let options = try spawnOptions(for: request)
    var result: RunResult
    do {
      result = try await ProcessRunner.run(
        options, input: request.stdin.map { Array($0.utf8) },
        timeout: request.timeoutMs.map { .milliseconds($0) }, outputLimit: outputLimit)
    } catch let error as SpawnError {
      // The shell convention for "command not found / not executable".
      return ExecResult(
        exitCode: error.errno == ENOENT ? 127 : 126, stdout: "", stderr: "\(error)\n",
        durationMs: 0, truncated: false, timedOut: false)
    }
    // The limit is for both streams together: stderr gives way first.
    if result.stdout.count + result.stderr.count > outputLimit {
      let keep = max(0, outputLimit - result.stdout.count)
      result.stderr = Array(result.stderr.prefix(keep))
      result.stdout = Array(result.stdout.prefix(outputLimit))
      result.truncated = true
    }
    var stderr = result.stderrText
    if result.timedOut {
      stderr += "atelier: command timed out after \(request.timeoutMs ?? 0) ms and was killed\n"
    }
    return ExecResult(
      exitCode: result.exitCode, stdout: result.stdoutText, stderr: stderr,
      durationMs: result.durationMs, truncated: result.truncated, timedOut: result.timedOut)
  }

  /// Runs the commands in order; by default stops at the first that fails. All their output
  /// together is capped at `totalOutputLimit` (a command after the cap still runs, its output
  /// dropped and marked truncated).
  static func batch(
    _ request: ExecBatchRequest, totalOutputLimit: Int = AgentProtocol.batchOutputLimit
  ) async throws -> ExecBatchResult {
    guard !request.commands.isEmpty else { throw APIError.badRequest("commands is empty") }
    guard request.commands.count <= ExecBatchRequest.maxCommands else {
      throw APIError.badRequest("at most \(ExecBatchRequest.maxCommands) commands")
    }
    for (index, command) in request.commands.enumerated() {
      if let problem = command.validationProblem {
        throw APIError.badRequest("commands[\(index)]: \(problem)")
      }
    }
    var results: [ExecResult] = []
    var remaining = totalOutputLimit
    for command in request.commands {
      let result = try await run(
        command, outputLimit: min(AgentProtocol.defaultOutputLimit, remaining))
      remaining -= result.stdout.utf8.count + result.stderr.utf8.count
      remaining = max(0, remaining)
      results.append(result)
      if result.exitCode != 0 && request.stopOnError ?? true { break }
    }
    let ok = results.count == request.commands.count && results.allSatisfy { $0.exitCode == 0 }
    return ExecBatchResult(results: results, ok: ok)
  }

  static func spawnOptions(for request: ExecRequest) throws -> SpawnOptions {
    if let problem = request.validationProblem { throw APIError.badRequest(problem) }
    guard let user = GuestUser.resolve(request.user) else {
      throw APIError.notFound("unknown user \(request.user ?? "")")
    }
    let argv = request.argv ?? ["/bin/sh", "-c", request.command ?? ""]
    let cwd = request.cwd ?? (directoryExists(user.home) ? user.home : "/")
    guard directoryExists(cwd) else { throw APIError.notFound("cwd \(cwd) does not exist") }
    return SpawnOptions(
      executable: argv[0], arguments: Array(argv.dropFirst()),
      environment: user.environment(extra: request.env), workingDirectory: cwd,
      credentials: user.uid == getuid() ? nil : user.credentials, newSession: true)
  }
}

#if canImport(Glibc)
  import Glibc
#endif

func directoryExists(_ path: String) -> Bool {
  var info = stat()
  return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}
