import AtelierProcess
import Foundation
import Testing

/// The unmodified E2B SDK (pinned, from PyPI, installed once by scripts/install-test-tools)
/// against a real manager: its control plane and its envd, with one tiny sandbox. Every
/// check of Tests/Tools/e2b_sdk_check.py must pass, and each must have run.
extension VMTests {
  @Suite struct E2BSDKTests {
    /// The newest SDK, with its default HTTP version and with HTTP/1.1 forced, and an older
    /// one, each in its virtualenv.
    static let versions = ["2.63", "2.45"]
    static let runs: [(version: String, http: String?)] = [
      ("2.63", nil), ("2.63", "1.1"), ("2.45", nil),
    ]
    static func python(_ version: String) -> String {
      "\(TestEnvironment.repositoryRoot)/.build/test-tools/venv-e2b-\(version)/bin/python"
    }
    static var script: String { "\(TestEnvironment.repositoryRoot)/Tests/Tools/e2b_sdk_check.py" }

    /// What the script checks; a missing line (it stopped early) fails as much as a FAIL.
    static let checks = [
      "create", "run.stdout", "run.stderr", "run.exit_code", "run.exit3", "run.exit3.code",
      "run.envs", "run.cwd", "run.user_root", "commands.list", "commands.kill", "background.killed",
      "background.killed.code", "stdin", "background.wait", "run.timeout", "files.write_files",
      "files.rename", "pty.echo", "pty.resize", "pty.kill", "pty.killed", "watch.create",
      "watch.recursive", "files.gzip_upload", "files.octet_stream", "async.run",
      "async.watch_dir", "files.text",
      "files.bytes", "files.list",
      "files.exists", "files.exists_missing", "files.make_dir", "files.make_dir_again",
      "files.get_info", "files.remove", "files.read_missing", "get_info.state", "list.contains",
      "is_running", "get_info.bad_id", "connect.bad_id", "create.over_limit",
      "create.no_duplicate", "bad_key", "kill", "killed.is_running",
      "killed.get_info", "create.envs", "list.metadata", "list.metadata_other", "metrics", "pause",
      "pause.again", "paused.state", "connect.resumes",
    ]

    @Test func theE2BSDKDrivesASandbox() async throws {
      for version in Self.versions {
        try #require(
          FileManager.default.isExecutableFile(atPath: Self.python(version)),
          "E2B SDK \(version) is not installed: scripts/test installs it (scripts/install-test-tools)"
        )
      }
      try await withManager(environment: ["ATELIER_MAX_SANDBOXES": "1"]) { manager in
        // One SDK after the other: one VM at a time.
        for run in Self.runs { try await drive(manager, run.version, http: run.http) }
      }
    }

    func drive(_ manager: ManagerProcess, _ sdk: String, http: String?) async throws {
      var environment = [
        "PATH": "/usr/bin:/bin", "HOME": manager.dataDirectory,
        "E2B_API_KEY": manager.token, "E2B_API_URL": manager.baseURL,
        "E2B_SANDBOX_URL": manager.baseURL,
        // SDKs before 2.63 refuse keys not shaped like E2B's own (`e2b_<hex>`).
        "E2B_VALIDATE_API_KEY": "false",
      ]
      if let http { environment["E2B_HTTP_VERSION"] = http }
      let version = sdk + (http.map { " (HTTP \($0))" } ?? "")
      let result = try await ProcessRunner.run(
        SpawnOptions(
          executable: Self.python(sdk), arguments: [Self.script], environment: environment),
        timeout: .seconds(600))
      let output = result.stdoutText + result.stderrText
      #expect(result.exitCode == 0, "the checks of SDK \(version) failed:\n\(output)")
      let lines = Set(result.stdoutText.split(separator: "\n").map(String.init))
      let missing = Self.checks.filter { !lines.contains("ok \($0)") }
      #expect(missing.isEmpty, "SDK \(version): not passed: \(missing)")
      // Nothing is left of the sandbox the SDK killed.
      #expect(manager.qemuProcesses().isEmpty)
      if let timings = lines.first(where: { $0.hasPrefix("timings ") }) {
        print("e2b sdk \(version) \(timings)")
      }
    }
  }
}
