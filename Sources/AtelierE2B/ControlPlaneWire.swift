import Foundation

/// E2B's control-plane shapes, with E2B's JSON names (`sandboxID`, `memoryMB`…), as its SDKs
/// send and read them.

/// `POST /sandboxes` and `POST /v2/sandboxes`.
public struct E2BNewSandbox: Codable, Sendable {
  public var templateID: String?
  /// Seconds of lifetime (default 300).
  public var timeout: Int?
  /// Pause instead of kill at the end of the lifetime.
  public var autoPause: Bool?
  public var metadata: [String: String]?
  public var envVars: [String: String]?
  public var allowInternetAccess: Bool?
  public var secure: Bool?

  enum CodingKeys: String, CodingKey {
    case templateID, timeout, autoPause, metadata, envVars, secure
    case allowInternetAccess = "allow_internet_access"
  }

  public static let defaultTimeout = 300
}

/// What a create or connect answers.
public struct E2BSandbox: Codable, Sendable, Equatable {
  public var templateID: String
  public var sandboxID: String
  public var clientID: String
  public var envdVersion: String
  public var envdAccessToken: String?
  public var domain: String?
  public var alias: String?
}

public enum E2BState: String, Codable, Sendable { case running, paused }

/// What `POST /sandboxes/{id}/pause` and friends take when they take anything.
public struct E2BLifecycle: Codable, Sendable, Equatable {
  public var autoResume: Bool
  /// `kill` or `pause`.
  public var onTimeout: String
}

/// `GET /sandboxes/{id}`, and each item of `GET /v2/sandboxes`.
public struct E2BSandboxDetail: Codable, Sendable, Equatable {
  public var templateID: String
  public var sandboxID: String
  public var clientID: String
  public var alias: String?
  public var startedAt: String
  public var endAt: String
  public var envdVersion: String
  public var envdAccessToken: String?
  public var cpuCount: Int
  public var memoryMB: Int
  public var diskSizeMB: Int
  public var state: E2BState
  public var metadata: [String: String]
  public var domain: String?
  public var lifecycle: E2BLifecycle?
}

/// `POST /sandboxes/{id}/timeout`.
public struct E2BTimeoutRequest: Codable, Sendable {
  public var timeout: Int
}

/// `POST /sandboxes/{id}/connect` (and `/v2/…`): resume if paused; `timeout` sets the
/// lifetime (for a running sandbox only when longer than what is left).
public struct E2BConnectRequest: Codable, Sendable {
  public var timeout: Int?
}

/// One sample of `GET /sandboxes/{id}/metrics`.
public struct E2BSandboxMetric: Codable, Sendable {
  public var timestamp: String
  public var timestampUnix: Int
  public var cpuCount: Int
  public var cpuUsedPct: Double
  public var memUsed: Int64
  public var memTotal: Int64
  public var memCache: Int64
  public var diskUsed: Int64
  public var diskTotal: Int64
}

/// E2B's error body: the HTTP status again as `code`.
public struct E2BError: Codable, Sendable, Error, Equatable {
  public var code: Int
  public var message: String
  public init(code: Int, message: String) {
    self.code = code
    self.message = message
  }
}
