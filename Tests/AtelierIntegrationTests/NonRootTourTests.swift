import AtelierCore
import AtelierHost
import AtelierProcess
import Foundation
import Testing

/// The README's tour as a normal user would take it: a throwaway user made here (removed at
/// the end, whatever happens) installs the binaries with `atelier init --local`, then from a
/// folder of its own that is not the checkout, with a PATH without the sbin folders, builds
/// the tiny image (its own kernel download), serves on a loopback port, creates a sandbox,
/// runs a command in it and removes it. Every process the manager started must be that
/// user's, and nothing in its data folder root's.
///
/// The guest has user-mode networking with a way out, so the manager runs inside a network
/// namespace made here (ENVIRONMENT.md), entered as root, then the user's ids are taken
/// (`setpriv`) before `atelier` runs: from there on, nothing runs as root.
@Suite(.serialized, .enabled(if: getuid() == 0, "needs root to create the throwaway user"))
struct NonRootTourTests {
  struct User {
    let name: String
    let uid: UInt32
    let gid: UInt32
    let home: String
  }

  let tools = HostTools()

  @discardableResult
  func root(_ arguments: [String], timeout: Duration = .seconds(120)) async throws -> RunResult {
    let executable = try tools.require(arguments[0])
    let result = try await ProcessRunner.run(
      SpawnOptions(
        executable: executable, arguments: Array(arguments.dropFirst()),
        environment: ["PATH": tools.pathValue]),
      timeout: timeout)
    guard result.exitCode == 0 else {
      throw TestFailure("\(arguments.joined(separator: " ")): \(result.stderrText)")
    }
    return result
  }

  func makeUser() async throws -> User {
    let name = "atlup\(Identifier.make(length: 6).lowercased())"
    try await root(["useradd", "--create-home", "--user-group", "--shell", "/bin/sh", name])
    guard let entry = getpwnam(name) else { throw TestFailure("useradd made no \(name)") }
    return User(
      name: name, uid: entry.pointee.pw_uid, gid: entry.pointee.pw_gid,
      home: String(cString: entry.pointee.pw_dir))
  }

  /// Kills what is left of the user's processes (by pid: all of them are this test's), then
  /// removes the user, its home and the namespace.
  func removeEverything(user: User, namespace: String, staging: String) async {
    for _ in 0..<3 {
      let left = processes().filter { $0.uids.first == user.uid }
      if left.isEmpty { break }
      for process in left { kill(process.pid, SIGKILL) }
      try? await Task.sleep(for: .milliseconds(300))
    }
    _ = try? await root(["ip", "netns", "del", namespace])
    _ = try? await root(["userdel", "--remove", user.name])
    try? FileManager.default.removeItem(atPath: user.home)
    try? FileManager.default.removeItem(atPath: staging)
  }

  /// The environment a login shell of the user would have: no sbin folders on PATH.
  func environment(_ user: User, port: Int) -> [String: String] {
    [
      "HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
      "PATH": "\(user.home)/.local/bin:/usr/local/bin:/usr/bin:/bin",
      "ATELIER_SERVER_PORT": String(port),
    ]
  }

  /// `arguments` as the user, in its working folder: spawned with its uid and gid, inside the
  /// namespace when one is given (root enters it, `setpriv` then drops to the user).
  func asUser(
    _ user: User, _ arguments: [String], port: Int, namespace: String? = nil,
    timeout: Duration = .seconds(600), output: Int32? = nil
  ) throws -> SpawnOptions {
    let workdir = "\(user.home)/work"
    if let namespace {
      let prefix = [
        try tools.require("ip"), "netns", "exec", namespace, try tools.require("setpriv"),
        "--reuid=\(user.uid)", "--regid=\(user.gid)", "--clear-groups", "--",
      ]
      return SpawnOptions(
        executable: prefix[0], arguments: Array(prefix.dropFirst()) + arguments,
        environment: environment(user, port: port), workingDirectory: workdir,
        stdout: output, stderr: output)
    }
    return SpawnOptions(
      executable: arguments[0], arguments: Array(arguments.dropFirst()),
      environment: environment(user, port: port), workingDirectory: workdir,
      credentials: ProcessCredentials(uid: user.uid, gid: user.gid, groups: [user.gid]),
      stdout: output, stderr: output)
  }

  func run(
    _ user: User, _ arguments: [String], port: Int, namespace: String? = nil,
    timeout: Duration = .seconds(600)
  ) async throws -> RunResult {
    let result = try await ProcessRunner.run(
      try asUser(user, arguments, port: port, namespace: namespace), timeout: timeout)
    guard result.exitCode == 0 else {
      throw TestFailure(
        "as \(user.name): \(arguments.joined(separator: " ")) exited \(result.exitCode):\n"
          + result.stdoutText + result.stderrText)
    }
    return result
  }

  @Test func theReadmeTourAsAThrowawayUser() async throws {
    let agent = TestEnvironment.agentBinary
    guard FileManager.default.isExecutableFile(atPath: agent) else {
      throw TestFailure("no guest agent at \(agent): run scripts/test first")
    }
    let user = try await makeUser()
    let namespace = "atlup\(Identifier.make(length: 6).lowercased())"
    let staging = "/tmp/atl-unpriv-stage-\(Identifier.make(length: 6))"
    do {
      try await tour(user: user, namespace: namespace, staging: staging, agent: agent)
    } catch {
      let log = (try? String(contentsOfFile: "\(staging)/manager.log", encoding: .utf8)) ?? ""
      Issue.record("manager log:\n\(log.split(separator: "\n").suffix(40).joined(separator: "\n"))")
      await removeEverything(user: user, namespace: namespace, staging: staging)
      throw error
    }
    await removeEverything(user: user, namespace: namespace, staging: staging)
    #expect(getpwnam(user.name) == nil, "the throwaway user is gone")
  }

  func tour(user: User, namespace: String, staging: String, agent: String) async throws {
    let clock = ContinuousClock()
    let started = clock.now
    // What a user downloads: the binaries and the recipes in a folder, not the checkout.
    for folder in [staging, "\(user.home)/work"] {
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
      chown(folder, user.uid, user.gid)
    }
    try await root(["cp", TestEnvironment.atelierBinary, agent, "\(staging)/"])
    try await root(["cp", "-r", "\(TestEnvironment.repositoryRoot)/images", "\(staging)/"])
    try await root(["chown", "-R", "\(user.uid):\(user.gid)", staging])
    let port = try freePort()

    let install = try await run(user, ["\(staging)/atelier", "init", "--local"], port: port)
    #expect(install.stdoutText.contains("-> install \(user.home)/.local/bin/atelier\n"))
    #expect(
      install.stdoutText.contains("image recipes in \(user.home)/.local/share/atelier/images"))
    for file in [".local/bin/atelier", ".local/bin/atelier-agent"] {
      #expect(FileManager.default.isExecutableFile(atPath: "\(user.home)/\(file)"))
    }
    let again = try await run(user, ["\(staging)/atelier", "init", "--local"], port: port)
    #expect(again.stdoutText.contains("nothing to do"), "\(again.stdoutText)")

    // `atelier` by name, found in ~/.local/bin; mkfs.ext4 and debugfs in /usr/sbin.
    let buildStarted = clock.now
    let build = try await run(user, ["atelier", "images", "build", "tiny"], port: port)
    let buildTime = clock.now - buildStarted
    #expect(build.stdoutText.contains("built tiny"), "\(build.stdoutText)")
    // Its own kernel, downloaded as the user (nothing shared with the tests' image).
    #expect(build.stdoutText.contains("==> downloading linux-image-"), "\(build.stdoutText)")
    let cache = "\(user.home)/.local/share/atelier/cache"
    let debs = (try? FileManager.default.contentsOfDirectory(atPath: cache)) ?? []
    #expect(debs.contains { $0.hasPrefix("linux-image-") && $0.hasSuffix(".deb") }, "\(debs)")
    print("non-root tour: images build tiny (kernel download included): \(seconds(buildTime))")

    let doctor = try await ProcessRunner.run(
      try asUser(user, ["atelier", "doctor", "--json"], port: port))
    let findings = try DoctorTests.findings(doctor)
    DoctorTests.expectWellFormed(findings)
    #expect(doctor.exitCode == 0, "doctor failed as a normal user: \(doctor.stdoutText)")
    let kvm = DoctorTests.detail(findings, "kvm")
    if access("/dev/kvm", F_OK) == 0 {
      #expect(kvm.contains("no access to /dev/kvm") && kvm.contains("usermod -aG kvm \(user.name)"))
    }

    try await root(["ip", "netns", "add", namespace])
    try await root(["ip", "-n", namespace, "link", "set", "lo", "up"])
    let log = open("\(staging)/manager.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    let manager = try ProcessReaper.shared.spawn(
      try asUser(user, ["atelier", "serve"], port: port, namespace: namespace, output: log))
    close(log)
    let ready = await eventually(.seconds(60)) {
      (try? await run(user, ["atelier", "sandbox", "list"], port: port, namespace: namespace))
        != nil
    }
    #expect(ready, "the manager never answered")
    let managerLog = (try? String(contentsOfFile: "\(staging)/manager.log", encoding: .utf8)) ?? ""
    if access("/dev/kvm", F_OK) == 0 {
      // No access to /dev/kvm: TCG at once, the fix in the log, no probe boot.
      #expect(managerLog.contains("no access to /dev/kvm"), "\(managerLog)")
      #expect(!managerLog.contains("probing KVM"))
    }

    let create = try await run(
      user, ["atelier", "sandbox", "create"], port: port, namespace: namespace)
    let id = try #require(create.stdoutText.split(separator: " ").first.map(String.init))
    #expect(create.stdoutText.contains("running"), "\(create.stdoutText)")
    let exec = try await run(
      user, ["atelier", "sandbox", "exec", id, "--", "uname", "-a"], port: port,
      namespace: namespace)
    #expect(exec.stdoutText.hasPrefix("Linux "), "\(exec.stdoutText)")
    let whoami = try await run(
      user, ["atelier", "sandbox", "exec", id, "--", "id", "-u"], port: port, namespace: namespace)
    #expect(whoami.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    // In the guest the image's files are root's, not the builder's uid.
    let owner = try await run(
      user, ["atelier", "sandbox", "exec", id, "--", "stat", "-c", "%u:%g", "/bin/busybox"],
      port: port, namespace: namespace)
    #expect(owner.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) == "0:0")

    let spawned = descendants(of: manager)
    #expect(spawned.count >= 2, "the manager and its QEMU: \(spawned)")
    #expect(spawned.contains { $0.command.contains("qemu-system") }, "\(spawned)")
    for process in spawned {
      #expect(
        process.uids == [user.uid, user.uid, user.uid, user.uid]
          && process.gids == [user.gid, user.gid, user.gid, user.gid],
        "\(process.command) (pid \(process.pid)) runs as uids \(process.uids) gids \(process.gids)")
    }

    // While the sandbox runs (its disk, sockets and pid file are there), and after.
    let data = "\(user.home)/.local/share/atelier"
    let running = ownership(under: data)
    let sockets = running.keys.filter { $0.hasPrefix("sandboxes/\(id)/") && $0.hasSuffix(".sock") }
    #expect(!sockets.isEmpty, "the sandbox's sockets: \(running.keys.sorted())")
    expectOwned(by: user, running)
    _ = try await run(user, ["atelier", "sandbox", "rm", id], port: port, namespace: namespace)
    let owners = ownership(under: data)
    #expect(owners.count > 10, "the walk saw the data folder: \(owners.count) entries")
    #expect(owners["admin-token"] == user.uid)
    #expect(owners["atelier.db"] == user.uid)
    expectOwned(by: user, owners)
    let total = clock.now - started
    print("non-root tour: install, build, serve, create, exec, rm: \(seconds(total))")
    kill(manager, SIGTERM)
    _ = await ProcessReaper.shared.waitForExit(manager)
    try await scriptsRun(user: user, staging: staging, agent: agent)
  }

  /// `scripts/run` as the user in a checkout of its own, every package already there: no sudo,
  /// it says whose the data folder is, and ends in a manager the user runs. The Swift build is
  /// a stand-in (the binaries of this build are put where it would leave them; building the
  /// whole package again takes most of an hour on these machines).
  func scriptsRun(user: User, staging: String, agent: String) async throws {
    let checkout = "\(user.home)/checkout"
    let fakes = "\(user.home)/fakebin"
    for folder in ["\(checkout)/.build/release", fakes] {
      try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    }
    let repository = TestEnvironment.repositoryRoot
    try await root(["cp", "-r", "\(repository)/scripts", "\(repository)/images", "\(checkout)/"])
    try await root(["cp", TestEnvironment.atelierBinary, agent, "\(checkout)/.build/release/"])
    try Data("#!/bin/sh\necho \"stand-in: swift $*\"\n".utf8).write(
      to: URL(fileURLWithPath: "\(fakes)/swift"))
    chmod("\(fakes)/swift", 0o755)
    try await root(["chown", "-R", "\(user.uid):\(user.gid)", checkout, fakes])

    let port = try freePort()
    let logPath = "\(staging)/scripts-run.log"
    let log = open(logPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    var options = try asUser(user, ["\(checkout)/scripts/run"], port: port, output: log)
    options.environment["PATH"] = "\(fakes):/usr/bin:/bin"
    let pid = try ProcessReaper.shared.spawn(options)
    close(log)
    func text() -> String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    let serving = await eventually(.seconds(180)) {
      text().contains("Atelier manager on") || !ProcessReaper.shared.isRunning(pid)
    }
    let output = text()
    #expect(serving && output.contains("Atelier manager on"), "\(output)")
    #expect(output.contains("==> running as \(user.name), not root"), "\(output)")
    #expect(output.contains("\(user.home)/.local/share/atelier (yours)"))
    #expect(!output.contains("sudo"), "\(output)")
    #expect(output.contains("tiny is up to date"), "\(output)")
    if access("/dev/kvm", F_OK) == 0 {
      #expect(output.contains("no access to /dev/kvm"), "\(output)")
    }
    let process = processes().first { $0.pid == pid }
    #expect(process?.uids.first == user.uid, "the manager scripts/run started is the user's")
    kill(pid, SIGTERM)
    _ = await ProcessReaper.shared.waitForExit(pid)
  }

  func seconds(_ duration: Duration) -> String {
    String(
      format: "%.1f s",
      Double(duration.components.attoseconds) / 1e18 + Double(duration.components.seconds))
  }

  // MARK: What runs and what is on disk

  struct ProcessEntry: CustomStringConvertible {
    let pid: Int32
    let parent: Int32
    let uids: [UInt32]
    let gids: [UInt32]
    let command: String
    var description: String { "\(pid) \(command) uids \(uids)" }
  }

  func processes() -> [ProcessEntry] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.compactMap { pid in
      guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
      else { return nil }
      func field(_ name: String) -> [String] {
        status.split(separator: "\n").first { $0.hasPrefix("\(name):") }
          .map {
            $0.dropFirst(name.count + 1).split(whereSeparator: \.isWhitespace).map(String.init)
          }
          ?? []
      }
      let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
      let command = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        .joined(separator: " ")
      return ProcessEntry(
        pid: pid, parent: Int32(field("PPid").first ?? "") ?? 0,
        uids: field("Uid").compactMap { UInt32($0) }, gids: field("Gid").compactMap { UInt32($0) },
        command: command)
    }
  }

  /// The manager and every process below it (QEMU is its child; the manager is a subreaper).
  func descendants(of pid: Int32) -> [ProcessEntry] {
    let all = processes()
    var found = all.filter { $0.pid == pid }
    var frontier: Set<Int32> = [pid]
    while !frontier.isEmpty {
      let children = all.filter { frontier.contains($0.parent) }
      found += children
      frontier = Set(children.map(\.pid))
    }
    return found
  }

  func expectOwned(by user: User, _ owners: [String: UInt32]) {
    let foreign = owners.filter { $0.value != user.uid }
    #expect(foreign.isEmpty, "not the user's: \(foreign.keys.sorted().prefix(10))")
  }

  /// The owner of every entry under `folder` (symlinks themselves, not what they point at).
  func ownership(under folder: String) -> [String: UInt32] {
    var owners: [String: UInt32] = [:]
    var status = stat()
    if lstat(folder, &status) == 0 { owners["."] = status.st_uid }
    let enumerator = FileManager.default.enumerator(atPath: folder)
    while let relative = enumerator?.nextObject() as? String {
      if lstat("\(folder)/\(relative)", &status) == 0 { owners[relative] = status.st_uid }
    }
    return owners
  }
}
