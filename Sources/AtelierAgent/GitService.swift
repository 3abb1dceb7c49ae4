import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess

#if canImport(Glibc)
  import Glibc
#endif

/// Git for the repositories under the workspace, run as the default user.
enum GitService {
  static let workspace = "/home/dev/workspace"

  static func git(_ repo: String, _ arguments: [String], input: String? = nil) async throws
    -> RunResult
  {
    guard let user = GuestUser.resolve(nil) else {
      throw APIError.internalError("no user to run git as")
    }
    var environment = user.environment(extra: ["GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"])
    // Commits need an identity; give one only where the user has not set their own.
    let identity = try? await ProcessRunner.run(
      SpawnOptions(
        executable: "git", arguments: ["-C", repo, "config", "user.email"],
        environment: environment,
        credentials: user.uid == getuid() ? nil : user.credentials))
    if identity?.exitCode != 0 {
      let host =
        readTextFile("/etc/hostname")?.trimmed ?? "sandbox"
      for role in ["AUTHOR", "COMMITTER"] {
        environment["GIT_\(role)_NAME"] = user.name
        environment["GIT_\(role)_EMAIL"] = "\(user.name)@\(host)"
      }
    }
    do {
      return try await ProcessRunner.run(
        SpawnOptions(
          executable: "git", arguments: ["-C", repo] + arguments, environment: environment,
          workingDirectory: repo, credentials: user.uid == getuid() ? nil : user.credentials),
        input: input.map { Array($0.utf8) }, timeout: .seconds(300), outputLimit: 4 << 20)
    } catch {
      throw APIError.internalError("git is not installed in this image")
    }
  }

  /// Git repositories in the workspace (a repo itself, or up to two levels down).
  static func repositories(_ requested: String?) throws -> [String] {
    if let requested {
      let path = try FileService.checkedPath(requested)
      guard directoryExists("\(path)/.git") else {
        throw APIError.notFound("\(path) is not a git repository")
      }
      return [path]
    }
    var found: [String] = []
    func scan(_ directory: String, depth: Int) {
      if directoryExists("\(directory)/.git") {
        found.append(directory)
        return
      }
      guard depth < 2, let entries = try? FileService.list(path: directory) else { return }
      for entry in entries.entries where entry.type == .directory {
        scan(entry.path, depth: depth + 1)
      }
    }
    if directoryExists(workspace) { scan(workspace, depth: 0) }
    return found
  }

  static func status(repoPath: String?) async throws -> GitStatusResponse {
    var repos: [GitRepoStatus] = []
    for repo in try repositories(repoPath) {
      let porcelain = try await git(repo, ["status", "--porcelain=v2", "--branch"])
      guard porcelain.exitCode == 0 else {
        throw APIError.badRequest("git status failed in \(repo): \(porcelain.stderrText)")
      }
      var branch: String?
      var ahead = 0
      var behind = 0
      var changed: [String] = []
      for line in porcelain.stdoutText.split(separator: "\n") {
        if line.hasPrefix("# branch.head ") {
          let name = String(line.dropFirst("# branch.head ".count))
          branch = name == "(detached)" ? nil : name
        } else if line.hasPrefix("# branch.ab ") {
          let parts = line.split(separator: " ")
          ahead = Int(parts[2].dropFirst()) ?? 0
          behind = Int(parts[3].dropFirst()) ?? 0
        } else if line.hasPrefix("1 ") || line.hasPrefix("u ") {
          changed.append(String(line.split(separator: " ", maxSplits: 8).last ?? ""))
        } else if line.hasPrefix("2 ") {
          let path = line.split(separator: " ", maxSplits: 9).last ?? ""
          changed.append(String(path.split(separator: "\t").first ?? path))
        } else if line.hasPrefix("? ") {
          changed.append(String(line.dropFirst(2)))
        }
      }
      repos.append(
        GitRepoStatus(
          path: repo, branch: branch, dirty: !changed.isEmpty, ahead: ahead, behind: behind,
          changedFiles: changed, lastCommit: try await lastCommit(repo)))
    }
    return GitStatusResponse(repos: repos)
  }

  static func lastCommit(_ repo: String) async throws -> GitCommitInfo? {
    let log = try await git(repo, ["log", "-1", "--format=%H%x00%s%x00%an%x00%ct"])
    guard log.exitCode == 0 else { return nil }
    let fields = log.stdoutText.trimmed.split(
      separator: "\0", omittingEmptySubsequences: false)
    guard fields.count == 4 else { return nil }
    return GitCommitInfo(
      hash: String(fields[0]), message: String(fields[1]), author: String(fields[2]),
      date: Double(fields[3]) ?? 0)
  }

  static func diff(repoPath: String?) async throws -> GitDiffResponse {
    var repos: [GitRepoDiff] = []
    for repo in try repositories(repoPath) {
      let hasHead = try await git(repo, ["rev-parse", "--verify", "-q", "HEAD"]).exitCode == 0
      let base = hasHead ? ["HEAD"] : ["--cached"]
      let numstat = try await git(repo, ["diff", "--numstat"] + base)
      var files: [GitFileDiff] = []
      for line in numstat.stdoutText.split(separator: "\n") {
        let parts = line.split(separator: "\t", maxSplits: 2)
        guard parts.count == 3 else { continue }
        files.append(
          GitFileDiff(
            path: String(parts[2]), added: Int(parts[0]) ?? 0, removed: Int(parts[1]) ?? 0))
      }
      // Untracked files count as all lines added.
      let untracked = try await git(repo, ["ls-files", "--others", "--exclude-standard"])
      for path in untracked.stdoutText.split(separator: "\n") {
        let lines =
          readTextFile("\(repo)/\(path)", limit: 8 << 20)?.split(
            separator: "\n", omittingEmptySubsequences: false
          ).count ?? 0
        files.append(GitFileDiff(path: String(path), added: max(0, lines - 1), removed: 0))
      }
      let patch = try await git(repo, ["diff"] + base)
      repos.append(
        GitRepoDiff(path: repo, files: files, patch: String(patch.stdoutText.prefix(256 << 10))))
    }
    return GitDiffResponse(repos: repos)
  }

  static func commit(_ request: GitRepoRequest) async throws -> GitCommandResult {
    let repo = try repositories(request.repoPath)[0]
    guard let message = request.message, !message.isEmpty else {
      throw APIError.badRequest("message is required")
    }
    let add = try await git(repo, ["add", "-A"])
    guard add.exitCode == 0 else {
      return GitCommandResult(ok: false, commit: nil, output: add.stderrText)
    }
    let commit = try await git(repo, ["commit", "-q", "-F", "-"], input: message)
    guard commit.exitCode == 0 else {
      let output = commit.stdoutText + commit.stderrText
      if output.contains("nothing to commit") {
        throw APIError.conflict("nothing to commit in \(repo)")
      }
      return GitCommandResult(ok: false, commit: nil, output: output)
    }
    let head = try await git(repo, ["rev-parse", "HEAD"])
    return GitCommandResult(
      ok: true, commit: head.stdoutText.trimmed,
      output: commit.stdoutText + commit.stderrText)
  }

  static func push(_ request: GitRepoRequest) async throws -> GitCommandResult {
    let repo = try repositories(request.repoPath)[0]
    let push = try await git(repo, ["push", "--porcelain"])
    return GitCommandResult(
      ok: push.exitCode == 0, commit: nil, output: push.stdoutText + push.stderrText)
  }
}
