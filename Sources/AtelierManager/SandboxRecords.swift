import AtelierAgentAPI
import AtelierCore
import AtelierStore
import Foundation
import Logging

/// What a sandbox row says: its API form, status and runtime state.
extension SandboxService {
  static func info(_ record: SandboxRecord) -> SandboxInfo {
    let runtime = runtime(record)
    return SandboxInfo(
      id: record.id, status: status(record), image: record.image, vcpus: record.vcpus,
      memoryMb: record.memoryMb, hostname: record.hostname, createdAt: record.createdAt,
      updatedAt: record.updatedAt,
      timings: record.timings.flatMap {
        try? JSONDecoder().decode(SpawnTimings.self, from: Data($0.utf8))
      },
      error: record.error, timeoutSeconds: record.timeoutSeconds,
      onIdle: record.onIdle.flatMap(IdleAction.init(rawValue:)), snapshotId: record.snapshotId,
      ipAddress: runtime.network.flatMap { $0.mac == nil ? nil : $0.guestIPv4 },
      diskGb: runtime.diskGb, expiresAt: record.expiresAt,
      onExpiry: record.expiresAt == nil
        ? nil : record.expiryAction.flatMap(ExpiryAction.init(rawValue:)) ?? .delete,
      network: runtime.policy, ownerId: record.ownerId)
  }

  static func status(_ record: SandboxRecord) -> SandboxStatus {
    SandboxStatus(rawValue: record.status) ?? .error
  }

  /// The row's runtime JSON. This manager wrote it, so one that cannot be read is a defect:
  /// an error naming the row, never an empty runtime (no VM, no key, no policy) in its place.
  static func storedRuntime(_ record: SandboxRecord) throws -> SandboxRuntime {
    guard let text = record.runtime else { return SandboxRuntime() }
    do {
      return try JSONDecoder().decode(SandboxRuntime.self, from: Data(text.utf8))
    } catch {
      throw AtelierError.internal(
        "the stored state of sandbox \(record.id) cannot be read", cause: error)
    }
  }

  /// What answers and checks read: the stored runtime, or (logged) an empty one.
  static func runtime(_ record: SandboxRecord) -> SandboxRuntime {
    do {
      return try storedRuntime(record)
    } catch {
      Logger(label: "atelier.sandboxes").error("\(error)", metadata: ["sandbox": "\(record.id)"])
      return SandboxRuntime()
    }
  }

  static func encode<T: Encodable>(_ value: T) -> String {
    String(decoding: (try? JSONEncoder().encode(value)) ?? Data(), as: UTF8.self)
  }
}
