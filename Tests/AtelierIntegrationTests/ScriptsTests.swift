import AtelierProcess
import Foundation
import Testing

/// `scripts/install-deps` as a normal user (`nobody`): nothing to install needs no sudo at all;
/// a missing package is installed with `sudo apt-get` only; without sudo it says what root
/// must install. dpkg-query and sudo are stand-ins on PATH, so nothing is installed for real.
@Suite(.enabled(if: getuid() == 0, "needs root to run the script as another user"))
struct ScriptsTests {
  let nobody = ProcessCredentials(uid: 65534, gid: 65534, groups: [65534])

  func scratch() throws -> String {
    let path = try TestEnvironment.temporaryDirectory("atl-unpriv-deps")
    chown(path, 65534, 65534)
    return path
  }

  func script(_ path: String, _ body: String) throws {
    try Data(("#!/bin/sh\n" + body).utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o755)
  }

  func installDeps(fakes: String, path: String? = nil) async throws -> RunResult {
    try await ProcessRunner.run(
      SpawnOptions(
        executable: "\(TestEnvironment.repositoryRoot)/scripts/install-deps",
        environment: ["PATH": path ?? "\(fakes):/usr/bin:/bin", "HOME": fakes],
        workingDirectory: fakes, credentials: nobody),
      timeout: .seconds(60))
  }

  @Test func withEveryPackageThereNoSudoIsNeeded() async throws {
    let fakes = try scratch()
    defer { try? FileManager.default.removeItem(atPath: fakes) }
    // A sudo that would record being asked: it must not be.
    try script("\(fakes)/sudo", "echo \"$@\" >> \(fakes)/sudo.log\n")
    let result = try await installDeps(fakes: fakes)
    #expect(result.exitCode == 0, "\(result.stdoutText)\(result.stderrText)")
    #expect(!FileManager.default.fileExists(atPath: "\(fakes)/sudo.log"))
    #expect(result.stdoutText.isEmpty)
  }

  @Test func aMissingPackageIsInstalledWithSudoAptGetOnly() async throws {
    let fakes = try scratch()
    defer { try? FileManager.default.removeItem(atPath: fakes) }
    // qemu-utils "missing"; every other package as dpkg really says.
    try script(
      "\(fakes)/dpkg-query",
      "case \"$*\" in *qemu-utils*) exit 1;; esac\nexec /usr/bin/dpkg-query \"$@\"\n")
    try script("\(fakes)/sudo", "echo \"$@\" >> \(fakes)/sudo.log\n")
    let result = try await installDeps(fakes: fakes)
    #expect(result.exitCode == 0, "\(result.stdoutText)\(result.stderrText)")
    #expect(
      result.stdoutText.contains(
        "installing qemu-utils with sudo apt-get (the only step that needs root)"))
    let asked = try String(contentsOfFile: "\(fakes)/sudo.log", encoding: .utf8)
    #expect(
      asked
        == "apt-get update -qq\n"
        + "env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils\n",
      "\(asked)")
  }

  @Test func withoutSudoItSaysWhatRootMustInstall() async throws {
    let fakes = try scratch()
    defer { try? FileManager.default.removeItem(atPath: fakes) }
    try script(
      "\(fakes)/dpkg-query",
      "case \"$*\" in *qemu-utils*) exit 1;; esac\nexec /usr/bin/dpkg-query \"$@\"\n")
    // A PATH with only what the script needs besides sudo.
    for tool in ["bash", "id", "grep"] {
      try FileManager.default.createSymbolicLink(
        atPath: "\(fakes)/\(tool)", withDestinationPath: "/usr/bin/\(tool)")
    }
    let result = try await installDeps(fakes: fakes, path: fakes)
    #expect(result.exitCode == 1)
    #expect(
      result.stderrText.contains("missing Debian packages: qemu-utils"), "\(result.stderrText)")
    #expect(result.stderrText.contains("install them as root (apt-get install qemu-utils)"))
  }
}
