import Foundation

public enum SandboxStatus: String, Codable, Sendable, CaseIterable {
  case creating, running, paused, stopping, stopped, error
}

/// What happens to a sandbox left idle for `timeoutSeconds`.
public enum IdleAction: String, Codable, Sendable, CaseIterable {
  case pause, stop
}

/// What happens to a sandbox at the end of its lifetime (`expiresAt`).
public enum ExpiryAction: String, Codable, Sendable, CaseIterable {
  case delete, pause
}

/// Milliseconds spent in each step of a create.
public struct SpawnTimings: Codable, Sendable, Equatable {
  public var cloneMs: Int
  public var bootMs: Int
  public var agentMs: Int
  public var totalMs: Int
  public init(cloneMs: Int, bootMs: Int, agentMs: Int, totalMs: Int) {
    self.cloneMs = cloneMs
    self.bootMs = bootMs
    self.agentMs = agentMs
    self.totalMs = totalMs
  }
}

/// A sandbox as the API shows it.
public struct SandboxInfo: Codable, Sendable, Equatable {
  public var id: String
  public var status: SandboxStatus
  public var image: String
  public var vcpus: Int
  public var memoryMb: Int
  public var hostname: String
  public var createdAt: Date
  public var updatedAt: Date
  public var timings: SpawnTimings?
  public var error: String?
  public var timeoutSeconds: Int?
  public var onIdle: IdleAction?
  /// Set when the sandbox was restored from a snapshot (or forked).
  public var snapshotId: String?
  /// The guest's address on the host bridge (bridge networking only).
  public var ipAddress: String?
  /// The size of the sandbox's disk (its root file system fills it).
  public var diskGb: Int?
  /// The end of its lifetime, when `onExpiry` happens (nil: none).
  public var expiresAt: Date?
  public var onExpiry: ExpiryAction?
  /// What the guest may reach (the host's default deny list comes on top).
  public var network: NetworkPolicy?
  /// The id of the user it belongs to.
  public var ownerId: String?

  public init(
    id: String, status: SandboxStatus, image: String, vcpus: Int, memoryMb: Int,
    hostname: String, createdAt: Date, updatedAt: Date, timings: SpawnTimings? = nil,
    error: String? = nil, timeoutSeconds: Int? = nil, onIdle: IdleAction? = nil,
    snapshotId: String? = nil, ipAddress: String? = nil, diskGb: Int? = nil,
    expiresAt: Date? = nil, onExpiry: ExpiryAction? = nil, network: NetworkPolicy? = nil,
    ownerId: String? = nil
  ) {
    self.id = id
    self.status = status
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.hostname = hostname
    self.createdAt = createdAt
    self.updatedAt = updatedAt
    self.timings = timings
    self.error = error
    self.timeoutSeconds = timeoutSeconds
    self.onIdle = onIdle
    self.snapshotId = snapshotId
    self.ipAddress = ipAddress
    self.diskGb = diskGb
    self.expiresAt = expiresAt
    self.onExpiry = onExpiry
    self.network = network
    self.ownerId = ownerId
  }
}

/// `POST /api/sandboxes`: boot an image, or restore a snapshot (`snapshot`).
public struct CreateSandboxRequest: Codable, Sendable {
  public var image: String?
  public var vcpus: Int?
  public var memoryMb: Int?
  public var snapshot: String?
  public var timeoutSeconds: Int?
  public var onIdle: IdleAction?
  /// Disk size; default `ATELIER_DISK_SIZE_GB`, never smaller than the image's disk.
  public var diskGb: Int?
  /// Seconds until `onExpiry` happens, however busy the sandbox is (0 or none: no end).
  public var lifetimeSeconds: Int?
  /// `delete` by default.
  public var onExpiry: ExpiryAction?
  /// The sandbox-wide environment every command, terminal and service gets.
  public var env: [String: String]?
  /// Egress policy; a restore keeps the snapshot's where this leaves a field out.
  public var network: NetworkPolicyRequest?
  public init(
    image: String? = nil, vcpus: Int? = nil, memoryMb: Int? = nil, snapshot: String? = nil,
    timeoutSeconds: Int? = nil, onIdle: IdleAction? = nil, diskGb: Int? = nil,
    lifetimeSeconds: Int? = nil, onExpiry: ExpiryAction? = nil, env: [String: String]? = nil,
    network: NetworkPolicyRequest? = nil
  ) {
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.snapshot = snapshot
    self.timeoutSeconds = timeoutSeconds
    self.onIdle = onIdle
    self.diskGb = diskGb
    self.lifetimeSeconds = lifetimeSeconds
    self.onExpiry = onExpiry
    self.env = env
    self.network = network
  }

  public static let vcpuRange = 1...8
  public static let memoryRange = 128...16384
  public static let diskRange = 1...16384
  public static let defaultVcpus = 1
  public static let defaultMemoryMb = 256
  /// Idle seconds before `onIdle` (0 turns it off); at most a year.
  public static let timeoutRange = 0...31_536_000
  /// Seconds of lifetime (0 turns it off); at most a year.
  public static let lifetimeRange = 0...31_536_000
}

/// The sizes a sandbox may have on this host (`ATELIER_MAX_VCPUS`, `…_MEMORY_MB`, `…_DISK_GB`).
public struct SandboxLimits: Sendable, Equatable {
  public var vcpus: ClosedRange<Int>
  public var memoryMb: ClosedRange<Int>
  public var diskGb: ClosedRange<Int>
  public init(vcpus: ClosedRange<Int>, memoryMb: ClosedRange<Int>, diskGb: ClosedRange<Int>) {
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.diskGb = diskGb
  }
}

/// `PATCH /api/sandboxes/{id}`: idle policy (`timeoutSeconds: 0` turns it off) and lifetime
/// (`lifetimeSeconds` from now; 0 turns it off).
public struct UpdateSandboxRequest: Codable, Sendable {
  public var timeoutSeconds: Int?
  public var onIdle: IdleAction?
  public var lifetimeSeconds: Int?
  public var onExpiry: ExpiryAction?
  public init(
    timeoutSeconds: Int? = nil, onIdle: IdleAction? = nil, lifetimeSeconds: Int? = nil,
    onExpiry: ExpiryAction? = nil
  ) {
    self.timeoutSeconds = timeoutSeconds
    self.onIdle = onIdle
    self.lifetimeSeconds = lifetimeSeconds
    self.onExpiry = onExpiry
  }
}

public struct SnapshotRequest: Codable, Sendable {
  public var name: String?
  public init(name: String? = nil) { self.name = name }
  public static let nameLength = 1...100
}

public struct SnapshotInfo: Codable, Sendable, Equatable {
  public var id: String
  public var sandboxId: String
  public var name: String
  public var image: String
  public var vcpus: Int
  public var memoryMb: Int
  public var createdAt: Date
  public var sizeBytes: Int64
  /// How long the sandbox was paused for it, and how long taking it took in all (absent for
  /// snapshots from before this was recorded).
  public var pauseMs: Int?
  public var totalMs: Int?
  /// The id of the user it belongs to.
  public var ownerId: String?
  public init(
    id: String, sandboxId: String, name: String, image: String, vcpus: Int, memoryMb: Int,
    createdAt: Date, sizeBytes: Int64, pauseMs: Int? = nil, totalMs: Int? = nil,
    ownerId: String? = nil
  ) {
    self.id = id
    self.sandboxId = sandboxId
    self.name = name
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.createdAt = createdAt
    self.sizeBytes = sizeBytes
    self.pauseMs = pauseMs
    self.totalMs = totalMs
    self.ownerId = ownerId
  }
}

/// Who asks: members see and act on what they own, admins on everything.
public struct Requester: Sendable, Equatable {
  public var userId: String
  public var isAdmin: Bool
  public init(userId: String, isAdmin: Bool) {
    self.userId = userId
    self.isAdmin = isAdmin
  }

  /// Whether something owned by `ownerId` is visible to (and may be acted on by) this caller.
  public func mayAccess(ownedBy ownerId: String?) -> Bool {
    isAdmin || (ownerId != nil && ownerId == userId)
  }

  /// The owner filter for lists: nil (everything) for admins.
  public var ownerFilter: String? { isAdmin ? nil : userId }
}

public struct ForkRequest: Codable, Sendable {
  public var count: Int?
  /// Egress policy of the forks; fields left out keep the parent's.
  public var network: NetworkPolicyRequest?
  public init(count: Int? = nil, network: NetworkPolicyRequest? = nil) {
    self.count = count
    self.network = network
  }
  public static let countRange = 1...16
}

public struct ForkResponse: Codable, Sendable {
  public var sandboxes: [SandboxInfo]
  public init(sandboxes: [SandboxInfo]) { self.sandboxes = sandboxes }
}

/// A built image as the API shows it.
public struct ImageInfo: Codable, Sendable, Equatable {
  public var name: String
  public var description: String
  public var kernelVersion: String
  public var diskBytes: Int64
  public var builtAt: Date
  public init(
    name: String, description: String, kernelVersion: String, diskBytes: Int64, builtAt: Date
  ) {
    self.name = name
    self.description = description
    self.kernelVersion = kernelVersion
    self.diskBytes = diskBytes
    self.builtAt = builtAt
  }
}

public struct HealthReport: Codable, Sendable {
  public struct Check: Codable, Sendable {
    public var ok: Bool
    public var detail: String
    public init(ok: Bool, detail: String) {
      self.ok = ok
      self.detail = detail
    }
  }
  public var status: String
  public var version: String
  public var checks: [String: Check]
  public init(status: String, version: String, checks: [String: Check]) {
    self.status = status
    self.version = version
    self.checks = checks
  }
}

public enum AtelierVersion {
  public static let current = "0.1.0"
}

extension JSONEncoder {
  /// ISO 8601 dates with milliseconds, sorted keys: the API's one JSON style.
  public static var atelier: JSONEncoder {
    let encoder = JSONEncoder()
    encoder.dateEncodingStrategy = .custom { date, encoder in
      var container = encoder.singleValueContainer()
      try container.encode(ISO8601.format(date))
    }
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return encoder
  }
}

extension JSONDecoder {
  public static var atelier: JSONDecoder {
    let decoder = JSONDecoder()
    decoder.dateDecodingStrategy = .custom { decoder in
      let text = try decoder.singleValueContainer().decode(String.self)
      guard let date = ISO8601.parse(text) else {
        throw DecodingError.dataCorrupted(
          .init(codingPath: decoder.codingPath, debugDescription: "not an ISO 8601 date: \(text)"))
      }
      return date
    }
    return decoder
  }
}

public enum ISO8601 {
  static let withFraction = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
  static let withoutFraction = Date.ISO8601FormatStyle()

  public static func format(_ date: Date) -> String { withFraction.format(date) }
  public static func parse(_ text: String) -> Date? {
    (try? withFraction.parse(text)) ?? (try? withoutFraction.parse(text))
  }
}
