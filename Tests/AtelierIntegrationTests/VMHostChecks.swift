import AtelierProcess
import Foundation
import Testing

/// What /proc says about a process: its real uid and its seccomp mode (2: a filter).
struct ProcessPrivileges: Equatable {
  var uid: UInt32
  var seccomp: Int

  init?(pid: Int32) {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    else { return nil }
    var uid: UInt32?
    var seccomp: Int?
    for line in status.split(separator: "\n") {
      let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      if fields.first == "Uid:", fields.count > 1 { uid = UInt32(fields[1]) }
      if fields.first == "Seccomp:", fields.count > 1 { seccomp = Int(fields[1]) }
    }
    guard let uid, let seccomp else { return nil }
    self.uid = uid
    self.seccomp = seccomp
  }
}

extension ManagerProcess {
  /// Every VM process of this manager runs as a user that is not root, under a seccomp
  /// filter; `count` of them when given.
  func expectLeastPrivilege(count: Int? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
    let pids = qemuProcesses()
    if let count { #expect(pids.count == count, sourceLocation: sourceLocation) }
    #expect(!pids.isEmpty, "no VM process to check", sourceLocation: sourceLocation)
    for pid in pids {
      let privileges = ProcessPrivileges(pid: pid)
      #expect(privileges != nil, "pid \(pid)", sourceLocation: sourceLocation)
      #expect(privileges?.uid != 0, "pid \(pid) runs as root", sourceLocation: sourceLocation)
      #expect(
        privileges?.seccomp == 2, "pid \(pid): \(String(describing: privileges))",
        sourceLocation: sourceLocation)
    }
  }

  /// The snapshot folders this manager's data folder holds.
  var snapshotFolders: [String] { files(in: "snapshots") }
}

/// A file system in a file, loop-mounted for one test (root only).
final class LoopFileSystem: @unchecked Sendable {
  let image: String
  let mountPoint: String

  static var unavailableReason: String? {
    guard getuid() == 0 else { return "needs root to loop-mount a file system" }
    for tool in ["/usr/sbin/mkfs.xfs", "/usr/sbin/mkfs.ext4", "/usr/bin/mount"]
    where !FileManager.default.isExecutableFile(atPath: tool) {
      return "needs \(tool) (Debian: xfsprogs, e2fsprogs, mount)"
    }
    return nil
  }

  init(kind: String, megabytes: Int) async throws {
    let base = try TestEnvironment.temporaryDirectory("atl-fs")
    image = "\(base).img"
    mountPoint = base
    try await Self.run(["truncate", "-s", "\(megabytes)M", image])
    try await Self.run(
      kind == "xfs" ? ["mkfs.xfs", "-q", image] : ["mkfs.ext4", "-q", "-F", image])
    try await Self.run(["mount", "-o", "loop", image, mountPoint])
  }

  /// Free bytes on it now.
  var freeBytes: Int64 {
    var info = statvfs()
    statvfs(mountPoint, &info)
    return Int64(info.f_bavail) * Int64(info.f_frsize)
  }

  func tearDown() async {
    _ = try? await Self.run(["umount", "-l", mountPoint])
    try? FileManager.default.removeItem(atPath: mountPoint)
    try? FileManager.default.removeItem(atPath: image)
  }

  @discardableResult
  static func run(_ arguments: [String]) async throws -> RunResult {
    let result = try await ProcessRunner.run(
      SpawnOptions(
        executable: arguments[0], arguments: Array(arguments.dropFirst()),
        environment: ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]),
      timeout: .seconds(120))
    guard result.exitCode == 0 else {
      throw TestFailure("\(arguments.joined(separator: " ")): \(result.stderrText)")
    }
    return result
  }
}

extension ManagerProcess {
  /// A manager whose data folder is `dataDirectory` (e.g. on a loop-mounted file system), with
  /// the shared tiny image copied in (so that its disk is on that file system: a reflink needs
  /// it) and the kernels linked.
  static func start(inDataDirectory data: String, environment extra: [String: String] = [:])
    async throws -> ManagerProcess
  {
    let shared = try await TestEnvironment.sharedImage.ensure("tiny")
    let catalog = "\(shared)/images/tiny/current"
    let record = try #require(
      try JSONSerialization.jsonObject(
        with: Data(contentsOf: URL(fileURLWithPath: "\(catalog)/image.json"))) as? [String: Any])
    let build = "\(data)/images/tiny/builds/copy"
    try FileManager.default.createDirectory(atPath: build, withIntermediateDirectories: true)
    let disk = try #require(record["diskPath"] as? String)
    try FileManager.default.copyItem(atPath: disk, toPath: "\(build)/rootfs.ext4")
    var copied = record
    copied["diskPath"] = "\(build)/rootfs.ext4"
    try JSONSerialization.data(withJSONObject: copied).write(
      to: URL(fileURLWithPath: "\(build)/image.json"))
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/images/tiny/current", withDestinationPath: "builds/copy")
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/kernels", withDestinationPath: "\(shared)/kernels")
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = data
    environment["ATELIER_SERVER_PORT"] = String(try freePort())
    environment["ATELIER_ACCEL"] = "tcg"
    environment["ATELIER_LOG_LEVEL"] = "debug"
    for (key, value) in extra { environment[key] = value }
    let manager = ManagerProcess(
      dataDirectory: data, port: Int(environment["ATELIER_SERVER_PORT"]!)!,
      environment: environment)
    try await manager.launch()
    return manager
  }
}
