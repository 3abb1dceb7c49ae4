import AtelierCore
import AtelierHTTP
import AtelierHost
import AtelierManager
import Foundation
import HTTPTypes
import Hummingbird
import Synchronization

/// One envd request, once let through: the sandbox, its agent, and the guest user it acts as.
struct EnvdCall: Sendable {
  let sandboxId: String
  let agent: AgentClient
  /// A guest user name (`dev`, `root`, …).
  let user: String

  var home: String { user == "root" ? "/root" : "/home/\(user)" }

  /// A path as envd takes it: relative ones are under the user's home.
  func path(_ raw: String?) throws -> String {
    guard let raw, !raw.isEmpty else { throw ConnectError(.invalidArgument, "path is required") }
    if raw.hasPrefix("/") { return raw }
    if raw.hasPrefix("~/") { return home + raw.dropFirst(1) }
    return raw == "~" ? home : "\(home)/\(raw)"
  }

  /// `owner=` for the agent's writes when the user is not root (the agent runs as root).
  var owner: String? { user == "root" ? nil : "\(user):\(user)" }
}

/// What E2B's proxy would answer instead of envd: a sandbox that is not there or not running
/// (502 "…was not found", which the SDK reads as not running) or a bad token (401). Plain
/// `{"code": <status>, "message"}` on every envd route, streams included.
struct EnvdRefusal: Error, Sendable {
  var status: Int
  var message: String

  static func notFound(_ id: String, _ why: String = "") -> EnvdRefusal {
    EnvdRefusal(status: 502, message: "The sandbox \(id) was not found\(why)")
  }

  var response: Response {
    jsonResponse(E2BError(code: status, message: message), status: .init(code: status))
  }
}

/// Lets an envd request through: the sandbox named by `E2b-Sandbox-Id` exists, the request
/// carries its `X-Access-Token`, and the user (Basic auth, or `username=` on `/files`) maps
/// onto a guest user: `user` → `dev`, `root` → `root`, none → the guest's default (`dev`
/// where it exists, else `root`, as the agent's own default).
final class EnvdGate: Sendable {
  let service: SandboxService
  let records: E2BRecords
  private let defaultUsers = Mutex<[String: String]>([:])

  init(service: SandboxService, records: E2BRecords) {
    self.service = service
    self.records = records
  }

  /// With `resume`, a paused sandbox is resumed (as Atelier's own API does); without, it is
  /// refused as not running (a health probe must not wake it).
  func open(_ request: Request, username: String? = nil, resume: Bool = true) async throws
    -> EnvdCall
  {
    let id = request.headers[.e2bSandboxId] ?? ""
    guard Identifier.isValid(id), let sandbox = try? await service.get(id) else {
      throw EnvdRefusal.notFound(id)
    }
    let token = request.headers[.accessToken] ?? ""
    guard let record = try? records.record(id), ConstantTime.equal(token, record.accessToken)
    else {
      throw EnvdRefusal(status: 401, message: "missing or invalid X-Access-Token")
    }
    switch sandbox.status {
    case .running: break
    case .paused where resume: break
    default: throw EnvdRefusal.notFound(id, " (it is \(sandbox.status.rawValue))")
    }
    let agent: AgentClient
    do {
      agent = try await service.agentClient(id)
    } catch {
      throw EnvdRefusal.notFound(id, " (its agent cannot be reached)")
    }
    let name = username ?? Self.basicUser(request.headers[.authorization])
    let user: String
    switch name {
    case nil, "": user = await defaultUser(id, agent)
    case "user": user = "dev"
    case let other?: user = other
    }
    return EnvdCall(sandboxId: id, agent: agent, user: user)
  }

  /// The user of `Authorization: Basic base64("<user>:")`.
  static func basicUser(_ header: String?) -> String? {
    guard let header, header.hasPrefix("Basic "),
      let data = Data(base64Encoded: String(header.dropFirst(6)))
    else { return nil }
    let text = String(decoding: data, as: UTF8.self)
    return text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).first
      .map(String.init)
  }

  /// `dev` when the guest has that user, else `root` (read once per sandbox).
  func defaultUser(_ id: String, _ agent: AgentClient) async -> String {
    if let known = defaultUsers.withLock({ $0[id] }) { return known }
    var user = "root"
    if let answer = try? await agent.raw(
      .GET, "/files?path=/etc/passwd", body: nil, timeout: .seconds(10))
    {
      let lines = String(decoding: answer.1, as: UTF8.self).split(separator: "\n")
      if lines.contains(where: { $0.hasPrefix("dev:") }) { user = "dev" }
    }
    defaultUsers.withLock { $0[id] = user }
    return user
  }
}
