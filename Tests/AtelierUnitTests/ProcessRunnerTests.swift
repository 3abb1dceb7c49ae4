import AtelierProcess
import Foundation
import Testing

@Suite struct ProcessRunnerTests {
  func shell(_ script: String) -> SpawnOptions {
    SpawnOptions(
      executable: "/bin/sh", arguments: ["-c", script], environment: ["PATH": "/usr/bin:/bin"])
  }

  @Test func collectsOutputAndExitCode() async throws {
    let result = try await ProcessRunner.run(shell("echo out; echo err >&2; exit 3"))
    #expect(result.exitCode == 3)
    #expect(result.stdoutText == "out\n")
    #expect(result.stderrText == "err\n")
    #expect(!result.truncated)
    #expect(!result.timedOut)
  }

  @Test func writesStandardInput() async throws {
    let input = (0..<200_000).map { UInt8($0 % 251) }
    let result = try await ProcessRunner.run(
      SpawnOptions(executable: "/bin/cat", environment: [:]), input: input)
    #expect(result.stdout == input)
  }

  @Test func timeoutKillsTheWholeProcessGroup() async throws {
    let pidFile = "/tmp/atelier-test-\(UUID().uuidString)"
    defer { unlink(pidFile) }
    let result = try await ProcessRunner.run(
      shell("sleep 60 & echo $! > \(pidFile); sleep 60"), timeout: .milliseconds(300))
    #expect(result.timedOut)
    #expect(result.status == .signaled(9))
    // The background child was in the group and died with it (however late the timer ran).
    let child = try #require(
      Int32(
        try String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(
          in: .whitespacesAndNewlines)))
    let deadline = ContinuousClock.now + .seconds(20)
    while kill(child, 0) == 0, ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(kill(child, 0) != 0, "the background child \(child) outlived the timeout")
  }

  @Test func capsOutput() async throws {
    let result = try await ProcessRunner.run(
      shell("head -c 100000 /dev/zero"), outputLimit: 1000)
    #expect(result.stdout.count == 1000)
    #expect(result.truncated)
  }

  @Test func backgroundChildKeepingThePipeDoesNotHoldTheCaller() async throws {
    let started = ContinuousClock.now
    let result = try await ProcessRunner.run(shell("sleep 120 & echo started"))
    #expect(result.exitCode == 0)
    #expect(result.stdoutText == "started\n")
    // Returned long before the child that still holds the pipe ends.
    #expect(ContinuousClock.now - started < .seconds(60))
  }

  @Test func missingProgramIsASpawnError() async throws {
    let error = try #require(throws: SpawnError.self) {
      try ProcessReaper.shared.spawn(SpawnOptions(executable: "/nonexistent/program"))
    }
    #expect(error.errno == ENOENT)
  }

  @Test func manyConcurrentRunsEachGetTheirOwnStatus() async throws {
    try await withThrowingTaskGroup(of: (Int, Int32).self) { group in
      for index in 0..<40 {
        group.addTask {
          let result = try await ProcessRunner.run(self.shell("exit \(index)"))
          return (index, result.exitCode)
        }
      }
      for try await (index, code) in group {
        #expect(Int32(index) == code)
      }
    }
  }
}
