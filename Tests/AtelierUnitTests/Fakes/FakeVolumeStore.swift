import Foundation
import Synchronization

@testable import AtelierHost

/// Volumes as empty files in a folder, with the snapshot freeze protocol; fails on demand.
final class FakeVolumeStore: VolumeStore, Sendable {
  let name = "fake"
  let directory: String
  let faults: FaultPlan
  /// Volume name → what it was cloned from.
  private let volumes = Mutex<[String: String]>([:])

  init(directory: String, faults: FaultPlan) {
    self.directory = directory
    self.faults = faults
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
  }

  var names: [String] { volumes.withLock { $0.keys.sorted() } }

  func path(_ name: String) -> String { "\(directory)/\(name).img" }

  func clone(base: DiskAttachment, to name: String, minimumSizeBytes: UInt64) async throws
    -> DiskAttachment
  {
    try faults.check(.clone)
    FileManager.default.createFile(atPath: path(name), contents: Data())
    volumes.withLock { $0[name] = base.path }
    return DiskAttachment(path: path(name), format: .raw)
  }

  func remove(_ name: String) async throws {
    try? FileManager.default.removeItem(atPath: path(name))
    _ = volumes.withLock { $0.removeValue(forKey: name) }
  }

  func list() async throws -> [String] { names }

  func prepareFreeze(_ name: String, as snapshotName: String) async throws -> FreezePlan {
    try faults.check(.freeze)
    FileManager.default.createFile(atPath: path(snapshotName), contents: Data())
    volumes.withLock { $0[snapshotName] = path(name) }
    let disk = DiskAttachment(path: path(name), format: .raw)
    return FreezePlan(
      volume: name, frozen: DiskAttachment(path: path(snapshotName), format: .raw), next: disk,
      previous: disk)
  }

  func commitFreeze(_ plan: FreezePlan) async throws {}
  func compact(_ name: String) async {}

  func abortFreeze(_ plan: FreezePlan) async {
    let snapshot = (plan.frozen.path as NSString).lastPathComponent.replacingOccurrences(
      of: ".img", with: "")
    try? await remove(snapshot)
  }

  func disk(of name: String) -> DiskAttachment? {
    volumes.withLock { $0[name] } == nil ? nil : DiskAttachment(path: path(name), format: .raw)
  }

  func collectGarbage(keep: Set<String>) async -> [String] {
    let needed = Set(volumes.withLock { $0.values })
    let removable = names.filter {
      $0.hasPrefix("snapshot-") && !keep.contains($0) && !needed.contains(path($0))
    }
    for name in removable { try? await remove(name) }
    return removable
  }

  func allocatedBytes(of name: String) async -> Int64? { 0 }
}
