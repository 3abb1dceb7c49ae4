import AtelierCore
import AtelierStore
import Foundation

/// Atelier's sandboxes as E2B's control plane shows them.
struct SandboxViews: Sendable {
  /// The envd version the adapter answers as: the SDK turns features on by it, and every
  /// feature gated at or below it works (recursive watches, stdin, the default user,
  /// CloseStdin, octet-stream and gzip uploads). File metadata (0.6.2) does not yet.
  static let envdVersion = "0.5.7"
  static let clientID = "atelier"

  /// What a create or connect answers.
  func created(_ sandbox: SandboxInfo, _ record: E2BSandboxRecord) -> E2BSandbox {
    E2BSandbox(
      templateID: record.templateId, sandboxID: sandbox.id, clientID: Self.clientID,
      envdVersion: Self.envdVersion, envdAccessToken: record.accessToken, domain: nil,
      alias: nil)
  }

  /// Running and paused sandboxes (stopped ones are shown as paused: a connect starts them);
  /// nil for one being created or in error.
  func detail(_ sandbox: SandboxInfo, _ record: E2BSandboxRecord) -> E2BSandboxDetail? {
    let state: E2BState
    switch sandbox.status {
    case .running: state = .running
    case .paused, .stopped, .stopping: state = .paused
    case .creating, .error: return nil
    }
    // A sandbox without a lifetime ends, for E2B's clients, a year after it started.
    let end =
      sandbox.expiresAt
      ?? sandbox.createdAt.addingTimeInterval(Double(CreateSandboxRequest.lifetimeRange.upperBound))
    return E2BSandboxDetail(
      templateID: record.templateId, sandboxID: sandbox.id, clientID: Self.clientID, alias: nil,
      startedAt: Self.timestamp(sandbox.createdAt), endAt: Self.timestamp(end),
      envdVersion: Self.envdVersion, envdAccessToken: record.accessToken,
      cpuCount: sandbox.vcpus, memoryMB: sandbox.memoryMb,
      diskSizeMB: (sandbox.diskGb ?? 0) * 1024, state: state,
      metadata: E2BRecords.metadata(record), domain: nil,
      lifecycle: E2BLifecycle(autoResume: false, onTimeout: record.autoPause ? "pause" : "kill"))
  }

  /// RFC 3339 with milliseconds, in UTC.
  static func timestamp(_ date: Date) -> String {
    date.formatted(
      Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt))
  }
}

/// `GET /v2/sandboxes` (and `/sandboxes`): `state=running,paused`, `metadata=k%3Dv%26k2%3Dv2`
/// (a URL-encoded query string of its own), `limit`, `nextToken` (the id the page starts at).
struct ListQuery: Sendable {
  var states: Set<E2BState> = [.running, .paused]
  var metadata: [String: String] = [:]
  var limit: Int?
  var nextToken: String?

  static let limitRange = 1...1000

  init(_ parameters: some Sequence<(key: Substring, value: Substring)>, paged: Bool) throws {
    var states: Set<E2BState> = []
    for (key, value) in parameters {
      switch key {
      case "state":
        for name in value.split(separator: ",") {
          guard let state = E2BState(rawValue: String(name)) else {
            throw AtelierError.validation("state must be running or paused, not \(name)")
          }
          states.insert(state)
        }
      case "metadata":
        // The router decoded the parameter once; its pairs are encoded once more.
        for pair in value.split(separator: "&") {
          let parts = pair.split(separator: "=", maxSplits: 1)
          let name = String(parts[0]).removingPercentEncoding ?? String(parts[0])
          let text = parts.count > 1 ? String(parts[1]) : ""
          metadata[name] = text.removingPercentEncoding ?? text
        }
      case "limit" where paged:
        guard let number = Int(value), Self.limitRange.contains(number) else {
          throw AtelierError.validation("limit must be a number from 1 to 1000")
        }
        limit = number
      case "nextToken" where paged:
        nextToken = String(value)
      default:
        continue
      }
    }
    if !states.isEmpty { self.states = states }
  }

  func matches(_ detail: E2BSandboxDetail) -> Bool {
    states.contains(detail.state)
      && metadata.allSatisfy { detail.metadata[$0.key] == $0.value }
  }

  /// The page `nextToken` starts (oldest first), and the token of the next one.
  func page(_ details: [E2BSandboxDetail]) throws -> ([E2BSandboxDetail], String?) {
    let sorted = details.sorted { ($0.startedAt, $0.sandboxID) < ($1.startedAt, $1.sandboxID) }
    var start = 0
    if let nextToken {
      guard let index = sorted.firstIndex(where: { $0.sandboxID == nextToken }) else {
        throw AtelierError.validation("nextToken \(nextToken) names no listed sandbox")
      }
      start = index
    }
    let end = limit.map { min(sorted.count, start + $0) } ?? sorted.count
    return (Array(sorted[start..<end]), end < sorted.count ? sorted[end].sandboxID : nil)
  }
}
