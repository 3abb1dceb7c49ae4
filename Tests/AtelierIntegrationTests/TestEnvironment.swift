import AsyncHTTPClient
import AtelierCore
import AtelierProcess
import Foundation
import NIOCore
import NIOHTTP1
import Testing

/// Paths and the one image shared by every test that boots VMs.
enum TestEnvironment {
  static let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
  }()

  /// The folder of this test build: the `atelier` binary of the same build lives there.
  static let buildDirectory: String = {
    let executable =
      (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
    var url = URL(fileURLWithPath: executable).deletingLastPathComponent()
    while url.path != "/"
      && !FileManager.default.fileExists(atPath: url.appendingPathComponent("atelier").path)
    {
      url.deleteLastPathComponent()
    }
    return url.path
  }()

  static var atelierBinary: String { "\(buildDirectory)/atelier" }

  /// The guest agent must run in a VM without a Swift runtime: scripts/test builds it with
  /// `swift build -c release --static-swift-stdlib --product atelier-agent`.
  static var agentBinary: String {
    ProcessInfo.processInfo.environment["ATELIER_TEST_AGENT"]
      ?? "\(repositoryRoot)/.build/release/atelier-agent"
  }

  /// Kept between runs (kernel download, built image); rebuilt when the agent changes.
  static var sharedDataDirectory: String { "\(repositoryRoot)/.build/atelier-test-data" }

  static let sharedImage = SharedImageBuild()

  static func temporaryDirectory(_ prefix: String) throws -> String {
    // Short: QMP socket paths must stay under 108 bytes.
    let path = "/tmp/\(prefix)-\(Identifier.make(length: 8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  static var baseEnvironment: [String: String] {
    var environment = ProcessInfo.processInfo.environment
    for key in environment.keys where key.hasPrefix("ATELIER_") { environment[key] = nil }
    environment["ATELIER_AGENT_PATH"] = agentBinary
    environment["ATELIER_RECIPES_DIR"] = "\(repositoryRoot)/images"
    return environment
  }

  /// Runs the `atelier` CLI and returns its exit code and output.
  static func cli(
    _ arguments: [String], environment: [String: String], timeout: Duration = .seconds(600)
  )
    async throws -> RunResult
  {
    try await ProcessRunner.run(
      SpawnOptions(executable: atelierBinary, arguments: arguments, environment: environment),
      timeout: timeout)
  }
}

/// Builds each image once per test process (and reuses it across runs when unchanged).
actor SharedImageBuild {
  private var built: [String: Task<String, any Error>] = [:]

  /// The shared data folder holding `images/<name>` and `kernels/`.
  func ensure(_ name: String = "tiny") async throws -> String {
    if let task = built[name] { return try await task.value }
    let task = Task<String, any Error> {
      guard FileManager.default.isExecutableFile(atPath: TestEnvironment.agentBinary) else {
        throw TestFailure(
          "no guest agent at \(TestEnvironment.agentBinary): run scripts/test, or build it with "
            + "`swift build -c release --static-swift-stdlib --product atelier-agent`")
      }
      var environment = TestEnvironment.baseEnvironment
      environment["ATELIER_DATA_DIR"] = TestEnvironment.sharedDataDirectory
      let result = try await TestEnvironment.cli(
        ["images", "build", name], environment: environment)
      guard result.exitCode == 0 else {
        throw TestFailure("image build failed: \(result.stdoutText)\(result.stderrText)")
      }
      return TestEnvironment.sharedDataDirectory
    }
    built[name] = task
    return try await task.value
  }
}

struct TestFailure: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

/// An HTTP answer from the manager.
struct HTTPAnswer {
  var status: Int
  var body: Data

  var json: [String: Any] {
    (try? JSONSerialization.jsonObject(with: body) as? [String: Any]) ?? [:]
  }
  var jsonArray: [[String: Any]] {
    (try? JSONSerialization.jsonObject(with: body) as? [[String: Any]]) ?? []
  }
  var text: String { String(decoding: body, as: UTF8.self) }
}

/// A real `atelier serve` process on its own data folder and port.
final class ManagerProcess: @unchecked Sendable {
  let dataDirectory: String
  let port: Int
  let environment: [String: String]
  private(set) var pid: Int32 = 0
  private(set) var token = ""

  var baseURL: String { "http://127.0.0.1:\(port)" }
  var logPath: String { "\(dataDirectory)/manager.log" }

  /// A fresh data folder using the shared image (images and kernels are linked, not copied).
  static func start(environment extra: [String: String] = [:], images: [String] = ["tiny"])
    async throws -> ManagerProcess
  {
    var shared = ""
    for image in images { shared = try await TestEnvironment.sharedImage.ensure(image) }
    let data = try TestEnvironment.temporaryDirectory("atl-it")
    try FileManager.default.createDirectory(
      atPath: "\(data)/images", withIntermediateDirectories: true)
    for image in images {
      try FileManager.default.createSymbolicLink(
        atPath: "\(data)/images/\(image)", withDestinationPath: "\(shared)/images/\(image)")
    }
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/kernels", withDestinationPath: "\(shared)/kernels")
    let port = try freePort()
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = data
    environment["ATELIER_SERVER_PORT"] = String(port)
    environment["ATELIER_ACCEL"] = "tcg"
    environment["ATELIER_LOG_LEVEL"] = "debug"
    // This manager runs in the host's namespace: its guests get no outbound network (user-mode
    // networking would turn their connections into this machine's). Tests that need one run
    // their manager in a namespace of their own (NamespacedManager).
    environment["ATELIER_GUEST_INTERNET"] = "false"
    for (key, value) in extra { environment[key] = value }
    let manager = ManagerProcess(dataDirectory: data, port: port, environment: environment)
    try await manager.launch()
    return manager
  }

  init(dataDirectory: String, port: Int, environment: [String: String]) {
    self.dataDirectory = dataDirectory
    self.port = port
    self.environment = environment
  }

  func launch() async throws {
    let logFile = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    defer { close(logFile) }
    pid = try ProcessReaper.shared.spawn(
      SpawnOptions(
        executable: TestEnvironment.atelierBinary, arguments: ["serve"], environment: environment,
        stdout: logFile, stderr: logFile))
    let deadline = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < deadline {
      if let answer = try? await request(.GET, "/health", authorized: false), answer.status == 200 {
        token = try String(contentsOfFile: "\(dataDirectory)/admin-token", encoding: .utf8)
          .trimmingCharacters(in: .whitespacesAndNewlines)
        return
      }
      guard ProcessReaper.shared.isRunning(pid) else {
        throw TestFailure("manager exited at start:\n\(log(lines: 30))")
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    throw TestFailure("manager did not answer /health:\n\(log(lines: 30))")
  }

  /// SIGKILL (no clean-up at all), then wait until it is gone.
  func kill(signal: Int32 = SIGKILL) async {
    guard pid > 0 else { return }
    Foundation.kill(pid, signal)
    _ = await ProcessReaper.shared.waitForExit(pid)
    pid = 0
  }

  func restart() async throws {
    await kill()
    try await launch()
  }

  func log(lines: Int) -> String {
    let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
  }

  func request(
    _ method: HTTPMethod, _ path: String, json body: Any? = nil, rawBody: String? = nil,
    raw: Data? = nil,
    authorized: Bool = true, token override: String? = nil, timeout: Duration = .seconds(300),
    retryOnClosedConnection: Bool = true
  ) async throws -> HTTPAnswer {
    var request = HTTPClientRequest(url: baseURL + path)
    request.method = method
    if authorized || override != nil {
      request.headers.add(name: "authorization", value: "Bearer \(override ?? token)")
    }
    if let body {
      request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body)))
      request.headers.add(name: "content-type", value: "application/json")
    } else if let rawBody {
      request.body = .bytes(ByteBuffer(string: rawBody))
      request.headers.add(name: "content-type", value: "application/json")
    } else if let raw {
      request.body = .bytes(ByteBuffer(bytes: raw))
      request.headers.add(name: "content-type", value: "application/octet-stream")
    }
    let response: HTTPClientResponse
    do {
      response = try await HTTPClient.shared.execute(
        request, timeout: .seconds(Int64(timeout.components.seconds)))
    } catch let error as HTTPClientError
      where error == .remoteConnectionClosed && retryOnClosedConnection
    {
      // A pooled keep-alive connection the server had just closed: nothing was processed,
      // send it again on a fresh connection (as any HTTP client would).
      response = try await HTTPClient.shared.execute(
        request, timeout: .seconds(Int64(timeout.components.seconds)))
    }
    let buffer = try await response.body.collect(upTo: 64 << 20)
    return HTTPAnswer(status: Int(response.status.code), body: Data(buffer.readableBytesView))
  }

  /// Creates a sandbox and expects it to run.
  func createSandbox(_ body: [String: Any] = [:]) async throws -> [String: Any] {
    let answer = try await request(.POST, "/api/sandboxes", json: body)
    guard answer.status == 201 else {
      throw TestFailure("create answered \(answer.status): \(answer.text)\n\(log(lines: 40))")
    }
    return answer.json
  }

  func exec(_ id: String, _ body: [String: Any]) async throws -> HTTPAnswer {
    try await request(.POST, "/api/sandboxes/\(id)/exec", json: body)
  }

  /// The CLI, pointed at this manager.
  func cli(_ arguments: [String]) async throws -> RunResult {
    var environment = self.environment
    environment["ATELIER_URL"] = baseURL
    return try await TestEnvironment.cli(arguments, environment: environment)
  }

  // MARK: What is on the host

  /// QEMU processes whose pid file lives in this manager's data folder.
  func qemuProcesses() -> [Int32] {
    let prefix = "\(dataDirectory)/sandboxes/"
    return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap {
      Int32($0)
    }
    .filter { pid in
      guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else {
        return false
      }
      let arguments = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
      let isZombie =
        (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8))?.contains(") Z ")
        ?? true
      return !isZombie && arguments.contains { $0.hasPrefix(prefix) }
    }
  }

  func files(in folder: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: "\(dataDirectory)/\(folder)")) ?? [])
      .sorted()
  }

  /// Stops the manager, kills any VM it left, removes the data folder.
  func tearDown() async {
    await kill()
    for pid in qemuProcesses() { Foundation.kill(pid, SIGKILL) }
    try? await Task.sleep(for: .milliseconds(200))
    try? FileManager.default.removeItem(atPath: dataDirectory)
  }
}

func freePort() throws -> Int {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_addr.s_addr = inet_addr("127.0.0.1")
  var length = socklen_t(MemoryLayout<sockaddr_in>.size)
  _ = withUnsafeMutablePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer -> Int32 in
      bind(fd, pointer, length)
      return getsockname(fd, pointer, &length)
    }
  }
  return Int(UInt16(bigEndian: address.sin_port))
}

/// Whether a socket listens on `port` (from /proc/net/tcp: connections closing in the
/// background do not count, and nothing is connected to, which could connect to itself).
func isListening(port: Int) -> Bool {
  let table = (try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)) ?? ""
  return table.split(separator: "\n").dropFirst().contains { line in
    let fields = line.split(separator: " ")
    guard fields.count > 3, fields[3] == "0A", let colon = fields[1].lastIndex(of: ":") else {
      return false
    }
    return Int(fields[1][fields[1].index(after: colon)...], radix: 16) == port
  }
}

extension HTTPMethodName {
  var nio: HTTPMethod {
    switch self {
    case .get: .GET
    case .post: .POST
    case .put: .PUT
    case .delete: .DELETE
    case .patch: .PATCH
    }
  }
}

/// Runs `body` with a fresh manager, and always tears it down (its VMs and data folder).
func withManager(
  environment: [String: String] = [:], images: [String] = ["tiny"],
  _ body: (ManagerProcess) async throws -> Void
) async throws {
  let manager = try await ManagerProcess.start(environment: environment, images: images)
  do {
    try await body(manager)
  } catch {
    // What the manager was doing is the first thing to look at.
    Issue.record("manager log (last lines):\n\(manager.log(lines: 60))")
    await manager.tearDown()
    throw error
  }
  await manager.tearDown()
}

/// Polls `check` until it holds or `timeout` passes; the last answer is the result.
func eventually(_ timeout: Duration = .seconds(30), _ check: () async throws -> Bool)
  async rethrows -> Bool
{
  let deadline = ContinuousClock.now + timeout
  while ContinuousClock.now < deadline {
    if try await check() { return true }
    try? await Task.sleep(for: .milliseconds(200))
  }
  return try await check()
}
