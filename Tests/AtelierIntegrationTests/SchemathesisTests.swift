import AtelierProcess
import Foundation
import Testing

/// The API against its own document, by schemathesis: every operation, every check, all
/// phases (stateful ones follow the document's links, so ids come from real answers), on a
/// real manager with real VMs. Zero failures, not only zero server errors.
extension VMTests {
  @Suite struct SchemathesisTests {
    static var schemathesis: String {
      "\(TestEnvironment.repositoryRoot)/.build/test-tools/venv/bin/schemathesis"
    }

    @Test func theAPIKeepsToItsDocument() async throws {
      try #require(
        FileManager.default.isExecutableFile(atPath: Self.schemathesis),
        "schemathesis is not installed: scripts/test installs it (scripts/install-test-tools)")
      // Small guests (the document's bounds follow the host's limits), so the VMs it makes
      // boot quickly.
      let limits = [
        "ATELIER_MAX_SANDBOXES": "2", "ATELIER_MAX_VCPUS": "1", "ATELIER_MAX_MEMORY_MB": "256",
        "ATELIER_MAX_DISK_GB": "2",
      ]
      try await withManager(environment: limits) { manager in
        let result = try await ProcessRunner.run(
          SpawnOptions(
            executable: Self.schemathesis,
            arguments: [
              "--config-file", "\(TestEnvironment.repositoryRoot)/Tests/Tools/schemathesis.toml",
              "run", "\(manager.baseURL)/openapi.json", "--checks", "all",
              "-H", "Authorization: Bearer \(manager.token)", "--no-color",
            ],
            environment: [
              "PATH": "/usr/bin:/bin", "HOME": manager.dataDirectory,
              "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
              "PYTHONPATH": "\(TestEnvironment.repositoryRoot)/Tests/Tools",
            ]),
          timeout: .seconds(900))
        let output = result.stdoutText + result.stderrText
        let summary = output.split(separator: "\n").suffix(30).joined(separator: "\n")
        #expect(result.exitCode == 0, "schemathesis found failures:\n\(output.suffix(20_000))")
        #expect(output.contains("generated"), "\(summary)")
        // Something was really exercised: a run where every request was refused proves nothing.
        #expect(!output.contains("Authentication failed"), "\(summary)")
      }
    }
  }
}
