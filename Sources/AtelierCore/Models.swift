import Foundation

public enum SandboxStatus: String, Codable, Sendable, CaseIterable {
  case creating, running, paused, stopping, stopped, error
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

  public init(
    id: String, status: SandboxStatus, image: String, vcpus: Int, memoryMb: Int,
    hostname: String, createdAt: Date, updatedAt: Date, timings: SpawnTimings? = nil,
    error: String? = nil
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
  }
}

/// `POST /api/sandboxes`.
public struct CreateSandboxRequest: Codable, Sendable {
  public var image: String?
  public var vcpus: Int?
  public var memoryMb: Int?
  public init(image: String? = nil, vcpus: Int? = nil, memoryMb: Int? = nil) {
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
  }

  public static let vcpuRange = 1...8
  public static let memoryRange = 128...16384
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
