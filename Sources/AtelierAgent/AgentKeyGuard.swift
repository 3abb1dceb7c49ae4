import AtelierAgentAPI
import AtelierHTTP
import Hummingbird
import Logging
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// The key the manager must present. Read at boot from the key drive; replaced after a
/// restore (`POST /system/resume` with `agentKey`), so a snapshot's key stops working.
final class AgentKeyStore: Sendable {
  private let key: Mutex<[UInt8]?>

  /// Nil: no key was found, and every request needing one is refused.
  init(key: String?) {
    self.key = Mutex(key.map { Array($0.utf8) })
  }

  var hasKey: Bool { key.withLock { $0 != nil } }

  /// Whether an `Authorization` header carries the key (compared in constant time).
  func authorizes(_ header: String?) -> Bool {
    guard let header, header.hasPrefix("Bearer ") else { return false }
    let presented = Array(header.utf8.dropFirst(7))
    return key.withLock { key in key.map { AgentKey.matches(presented, $0) } ?? false }
  }

  func replace(with newKey: String) {
    key.withLock { $0 = Array(newKey.utf8) }
  }
}

/// Refuses every request without the agent key with 401, before routing (so an unknown path
/// tells nothing either), except `GET /health`, which without the key says only that the
/// agent is up. WebSocket upgrades pass through here too.
struct AgentKeyMiddleware<Context: RequestContext>: RouterMiddleware {
  let keys: AgentKeyStore

  func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    if keys.authorizes(request.headers[.authorization]) {
      return try await next(request, context)
    }
    if request.method == .get && request.uri.path == "/health" {
      return jsonResponse(AgentStatus(status: "ok"))
    }
    throw APIError(
      status: .unauthorized, code: "UNAUTHORIZED",
      message: request.headers[.authorization] == nil
        ? "missing agent key" : "invalid agent key")
  }
}

/// What `/health` answers without the key.
struct AgentStatus: Codable {
  var status: String
}

/// Finds the key drive among the guest's block devices by its header (the device name depends
/// on the VMM and on probe order), reads the key, and makes the device root-read-only.
enum KeyDrive {
  static func find(logger: Logger, timeout: Duration = .seconds(3)) -> String? {
    let deadline = ContinuousClock.now + timeout
    repeat {
      for name in blockDevices() {
        let device = "/dev/\(name)"
        guard let key = read(device) else { continue }
        chmod(device, 0o400)
        logger.info("agent key read", metadata: ["device": "\(device)"])
        return key
      }
      usleep(50_000)
    } while ContinuousClock.now < deadline
    logger.error("no agent key drive found: every request will be refused")
    return nil
  }

  /// Whole disks (no partitions), virtio first; loop and RAM devices are never key drives.
  static func blockDevices() -> [String] {
    guard let directory = opendir("/sys/block") else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let item = readdir(directory) {
      let name = withUnsafePointer(to: item.pointee.d_name) {
        $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
      }
      if name.hasPrefix(".") || name.hasPrefix("loop") || name.hasPrefix("ram") { continue }
      names.append(name)
    }
    return names.sorted { ($0.hasPrefix("vd") ? 0 : 1, $0) < ($1.hasPrefix("vd") ? 0 : 1, $1) }
  }

  /// The key in a file or device holding a key drive's bytes.
  static func read(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: 512)
    let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
    guard count > 0 else { return nil }
    return AgentKeyDrive.key(in: buffer.prefix(count))
  }
}
