import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierStore
import Foundation

/// What a create decides beyond the machine: the idle policy, the lifetime, the environment.
struct SandboxPolicy: Sendable {
  var idle: (Int?, IdleAction?)
  /// Seconds from the create; nil: no end.
  var lifetimeSeconds: Int?
  var onExpiry: ExpiryAction
  var environment: [String: String]

  init(_ request: CreateSandboxRequest) throws {
    idle = try SandboxService.validateIdle(
      timeoutSeconds: request.timeoutSeconds, onIdle: request.onIdle)
    if let lifetime = request.lifetimeSeconds {
      try SandboxService.check("lifetimeSeconds", lifetime, in: CreateSandboxRequest.lifetimeRange)
    }
    lifetimeSeconds = request.lifetimeSeconds == 0 ? nil : request.lifetimeSeconds
    onExpiry = request.onExpiry ?? .delete
    environment = request.env ?? [:]
    if let problem = SandboxEnvironment.problem(environment) {
      throw AtelierError.validation(problem)
    }
  }

  /// A fork's: its parent's idle policy and environment, and the rest of its lifetime.
  init(inheritingFrom parent: SandboxRecord) {
    idle = (parent.timeoutSeconds, parent.onIdle.flatMap(IdleAction.init(rawValue:)))
    lifetimeSeconds = parent.expiresAt.map { max(1, Int($0.timeIntervalSinceNow.rounded(.up))) }
    onExpiry = parent.expiryAction.flatMap(ExpiryAction.init(rawValue:)) ?? .delete
    environment = SandboxService.environment(of: parent)
  }
}

/// Lifetimes (the end a sandbox has whatever it does, unlike the idle policy) and the
/// sandbox-wide environment its agent gives every command.
extension SandboxService {
  static func environment(of row: SandboxRecord) -> [String: String] {
    row.environment.flatMap {
      try? JSONDecoder().decode([String: String].self, from: Data($0.utf8))
    } ?? [:]
  }

  /// The environment of a sandbox.
  public func environment(_ id: String) throws -> [String: String] {
    Self.environment(of: try record(id))
  }

  /// Replaces the sandbox's environment: kept with it (a boot gets it again) and given to its
  /// agent now when it runs.
  public func setEnvironment(_ id: String, _ environment: [String: String]) async throws {
    if let problem = SandboxEnvironment.problem(environment) {
      throw AtelierError.validation(problem)
    }
    try await withSandboxLock(id) {
      var row = try record(id)
      row.environment = environment.isEmpty ? nil : Self.encode(environment)
      try database.update(row)
      if Self.status(row) == .running || Self.status(row) == .paused {
        try await pushEnvironment(id, evenIfEmpty: true)
      }
    }
  }

  /// Tells the sandbox's agent its environment (skipped when there is none, unless the agent
  /// may hold another one, as a restored snapshot's does).
  func pushEnvironment(_ id: String, evenIfEmpty: Bool) async throws {
    let row = try record(id)
    let environment = Self.environment(of: row)
    guard !environment.isEmpty || evenIfEmpty, let agent = recordedAgent(row) else { return }
    do {
      _ = try await agent.setEnvironment(GuestEnvironmentRequest(env: environment))
    } catch let error as AgentCallError where error.status == 404 && environment.isEmpty {
      // An agent from before sandbox environments (a snapshot's) holds none to clear.
      return
    } catch let error as AgentCallError {
      throw AtelierError(.bootFailed, "the agent refused the sandbox's environment: \(error)")
    }
  }

  /// Sets the end of a sandbox's lifetime `seconds` from now (nil: no end). With
  /// `onlyExtending`, an end already later stays.
  @discardableResult
  public func setLifetime(
    _ id: String, seconds: Int?, onExpiry: ExpiryAction? = nil, onlyExtending: Bool = false
  ) async throws -> SandboxInfo {
    if let seconds {
      try Self.check("lifetime", seconds, in: CreateSandboxRequest.lifetimeRange)
    }
    return try await withSandboxLock(id) {
      var row = try record(id)
      let end = seconds.map { Date().addingTimeInterval(Double($0)) }
      if !(onlyExtending && (row.expiresAt == nil || (end.map { $0 < row.expiresAt! } ?? false))) {
        row.expiresAt = end
      }
      if let onExpiry { row.expiryAction = onExpiry.rawValue }
      return Self.info(try save(row, from: Self.status(row)))
    }
  }

  /// Deletes (or pauses) every sandbox whose lifetime has ended; a paused one's lifetime is
  /// then over (it stays until deleted or resumed with a new one).
  public func reapExpired(now: Date = Date()) async {
    guard let rows = try? database.expiredSandboxes(now: now) else { return }
    for row in rows where !inFlight.contains(row.id) {
      let action = row.expiryAction.flatMap(ExpiryAction.init(rawValue:)) ?? .delete
      logger.info("sandbox lifetime over: \(action.rawValue)", metadata: ["sandbox": "\(row.id)"])
      do {
        switch action {
        case .delete:
          try await delete(row.id)
        case .pause:
          if Self.status(row) == .running { _ = try await pause(row.id) }
          _ = try await setLifetime(row.id, seconds: nil)
        }
      } catch {
        logger.warning(
          "lifetime \(action.rawValue) failed: \(error)", metadata: ["sandbox": "\(row.id)"])
      }
    }
  }
}

/// What a client naming a template (the E2B adapter) needs to know.
extension SandboxService {
  /// The image a create without one boots.
  public nonisolated var defaultImage: String { config.defaultImage }

  public nonisolated func hasImage(_ name: String) -> Bool {
    ImageName.isValid(name) && drivers.images.image(named: name) != nil
  }
}
