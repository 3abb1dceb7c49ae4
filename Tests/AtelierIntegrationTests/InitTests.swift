import AtelierProcess
import Foundation
import Testing

/// `atelier init` against a scratch root: the plan, the files it writes, and that a second run
/// on a prepared host changes nothing.
@Suite struct InitTests {
  func initialize(_ root: String, _ extra: [String]) async throws -> RunResult {
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = "\(root)/var/lib/atelier"
    return try await TestEnvironment.cli(
      ["init", "--root", root, "--skip-packages", "--image", "none"] + extra,
      environment: environment)
  }

  func snapshotOfFiles(_ root: String) -> [String: Data] {
    var files: [String: Data] = [:]
    let enumerator = FileManager.default.enumerator(atPath: root)
    while let path = enumerator?.nextObject() as? String {
      if let data = FileManager.default.contents(atPath: "\(root)/\(path)") { files[path] = data }
    }
    return files
  }

  @Test func dryRunPlansAndASecondRunChangesNothing() async throws {
    let root = try TestEnvironment.temporaryDirectory("atl-root")
    defer { try? FileManager.default.removeItem(atPath: root) }

    let plan = try await initialize(
      root, ["--dry-run", "--network", "bridge", "--allow-ports", "8080"])
    #expect(plan.exitCode == 0, "\(plan.stderrText)")
    let planned = plan.stdoutText
    for expected in [
      "-> folder \(root)/var/lib/atelier", "-> file \(root)/etc/atelier/config.json",
      "-> file \(root)/etc/systemd/system/atelier-manager.service",
      "-> file \(root)/etc/systemd/system/atelier-network.service",
      "-> install \(root)/usr/local/bin/atelier", "-> install \(root)/usr/local/bin/atelier-agent",
      "(skipped: --skip-packages)", "step(s) would run",
    ] {
      #expect(planned.contains(expected), "missing \(expected) in:\n\(planned)")
    }
    // A dry run changes nothing.
    #expect(snapshotOfFiles(root).isEmpty)

    let first = try await initialize(
      root, ["--yes", "--network", "bridge", "--allow-ports", "8080"])
    #expect(first.exitCode == 0, "\(first.stdoutText)\(first.stderrText)")
    #expect(first.stdoutText.contains("done:"))
    let config = try String(contentsOfFile: "\(root)/etc/atelier/config.json", encoding: .utf8)
    #expect(config.contains(#""network" : "bridge""#))
    #expect(config.contains(#""bridgeAllowedPorts" : ["#))
    let unit = try String(
      contentsOfFile: "\(root)/etc/systemd/system/atelier-manager.service", encoding: .utf8)
    #expect(unit.contains("KillMode=process"))
    #expect(unit.contains("ExecStart=/usr/local/bin/atelier serve"))
    #expect(FileManager.default.isExecutableFile(atPath: "\(root)/usr/local/bin/atelier"))
    let written = snapshotOfFiles(root)

    let second = try await initialize(
      root, ["--yes", "--network", "bridge", "--allow-ports", "8080"])
    #expect(second.exitCode == 0)
    #expect(second.stdoutText.contains("nothing to do"), "\(second.stdoutText)")
    #expect(!second.stdoutText.contains("-> "))
    #expect(snapshotOfFiles(root) == written)

    // The config it wrote is one the manager accepts.
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_CONFIG"] = "\(root)/etc/atelier/config.json"
    environment["ATELIER_DATA_DIR"] = "\(root)/var/lib/atelier"
    let doctor = try await TestEnvironment.cli(["doctor"], environment: environment)
    #expect(!doctor.stderrText.contains("invalid config"), "\(doctor.stderrText)")
    // The same findings as JSON: every driver is reported, configured or not.
    let report = try await TestEnvironment.cli(["doctor", "--json"], environment: environment)
    let findings = try #require(
      try JSONSerialization.jsonObject(with: Data(report.stdoutText.utf8)) as? [[String: Any]])
    let names = Set(findings.compactMap { $0["name"] as? String })
    #expect(names.isSuperset(of: ["qemu", "firecracker", "lvm", "bridge", "vhost-vsock", "agent"]))
    #expect(findings.allSatisfy { $0["ok"] is Bool && $0["detail"] is String })
    #expect(report.exitCode == (findings.contains { $0["ok"] as? Bool == false } ? 1 : 0))
  }

  @Test func firecrackerWithTheJailerIsConfigured() async throws {
    let root = try TestEnvironment.temporaryDirectory("atl-root")
    defer { try? FileManager.default.removeItem(atPath: root) }
    let result = try await initialize(
      root, ["--yes", "--vmm", "firecracker", "--jailer", "/usr/local/bin/jailer"])
    #expect(result.exitCode == 0, "\(result.stdoutText)\(result.stderrText)")
    let data = try #require(FileManager.default.contents(atPath: "\(root)/etc/atelier/config.json"))
    let config = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    #expect(config["vmm"] as? String == "firecracker")
    #expect(config["firecrackerJailer"] as? String == "/usr/local/bin/jailer")
    #expect(config["jailerUser"] as? String == "atelier")
  }

  @Test func badOptionsAreRefusedWithOneLine() async throws {
    let root = try TestEnvironment.temporaryDirectory("atl-root")
    defer { try? FileManager.default.removeItem(atPath: root) }
    for options in [
      ["--storage", "floppy"], ["--vmm", "firecracker", "--network", "user"],
      ["--network", "wifi"], ["--jailer", "/usr/bin/jailer"],
      ["--vmm", "firecracker", "--jailer", "jailer"],
    ] {
      let result = try await initialize(root, ["--dry-run"] + options)
      #expect(result.exitCode != 0, "\(options)")
      #expect(result.stderrText.contains("Error:"), "\(options): \(result.stderrText)")
    }
  }
  /// `init --local`: the binaries and every recipe file under a prefix, nothing else; the
  /// installed copy finds its recipes from there, and a miss names every folder it looked in.
  @Test func localInstallPutsBinariesAndRecipesUnderThePrefix() async throws {
    let prefix = try TestEnvironment.temporaryDirectory("atl-unpriv-prefix")
    defer { try? FileManager.default.removeItem(atPath: prefix) }
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_IMAGES_DIR"] = nil
    environment["ATELIER_RECIPES_DIR"] = nil
    let plan = try await TestEnvironment.cli(
      ["init", "--local", "--prefix", prefix, "--dry-run"], environment: environment)
    #expect(plan.exitCode == 0, "\(plan.stderrText)")
    #expect(plan.stdoutText.contains("-> install \(prefix)/bin/atelier\n"), "\(plan.stdoutText)")
    #expect(snapshotOfFiles(prefix).isEmpty)

    let first = try await TestEnvironment.cli(
      ["init", "--local", "--prefix", prefix], environment: environment)
    #expect(first.exitCode == 0, "\(first.stdoutText)\(first.stderrText)")
    #expect(first.stdoutText.contains("\(prefix)/bin is not on your PATH"), "\(first.stdoutText)")
    let files = Set(snapshotOfFiles(prefix).keys)
    #expect(
      files == [
        "bin/atelier", "bin/atelier-agent", "share/atelier/images/tiny/manifest.json",
        "share/atelier/images/dev-base/manifest.json", "share/atelier/images/dev-base/README.md",
      ], "\(files.sorted())")
    #expect(FileManager.default.isExecutableFile(atPath: "\(prefix)/bin/atelier-agent"))
    let second = try await TestEnvironment.cli(
      ["init", "--local", "--prefix", prefix], environment: environment)
    #expect(second.stdoutText.contains("nothing to do"), "\(second.stdoutText)")

    // The installed copy, run from elsewhere, looks in its prefix's share folder.
    let data = try TestEnvironment.temporaryDirectory("atl-unpriv-data")
    defer { try? FileManager.default.removeItem(atPath: data) }
    environment["ATELIER_DATA_DIR"] = data
    let miss = try await ProcessRunner.run(
      SpawnOptions(
        executable: "\(prefix)/bin/atelier", arguments: ["images", "build", "nope"],
        environment: environment, workingDirectory: "/"))
    #expect(miss.exitCode != 0)
    #expect(miss.stderrText.contains("looked for nope/manifest.json in \(prefix)/bin/images, "))
    #expect(miss.stderrText.contains("\(prefix)/share/atelier/images"), "\(miss.stderrText)")
    #expect(miss.stderrText.contains("known images: dev-base, tiny"), "\(miss.stderrText)")
    // A bad --local combination is refused.
    let bad = try await TestEnvironment.cli(
      ["init", "--local", "--storage", "loop:1G", "--dry-run"], environment: environment)
    #expect(bad.exitCode != 0 && bad.stderrText.contains("--local installs files only"))
  }
}
