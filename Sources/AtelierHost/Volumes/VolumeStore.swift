/// Sandbox disks. Every volume is a copy-on-write clone of a base (an image or a snapshot's
/// disk), made in O(1) on the common path.
public protocol VolumeStore: Sendable {
  var name: String { get }
  /// Creates volume `name` as a clone of `base`, grown to `minimumSizeBytes` when `base` is
  /// smaller; the result is what the VMM attaches.
  func clone(base: DiskAttachment, to name: String, minimumSizeBytes: UInt64) async throws
    -> DiskAttachment
  func remove(_ name: String) async throws
  /// Names of all volumes in the store.
  func list() async throws -> [String]

  /// Snapshots, step 1 (VM paused): freeze volume `name` as `snapshotName` and make an empty
  /// overlay on top of it, for the VMM to switch the running VM to.
  func prepareFreeze(_ name: String, as snapshotName: String) async throws -> FreezePlan
  /// Step 2 (the VM now writes to `plan.next`): make the overlay the volume.
  func commitFreeze(_ plan: FreezePlan) async throws
  /// Drops what only a running VM of the volume needed (call when none runs).
  func compact(_ name: String) async
  /// Undo step 1 when step 2 cannot happen.
  func abortFreeze(_ plan: FreezePlan) async
  /// The disk of a volume (for example a snapshot's frozen disk), or nil.
  func disk(of name: String) -> DiskAttachment?
  /// Removes frozen snapshot disks that are neither in `keep` nor under any other volume.
  func collectGarbage(keep: Set<String>) async -> [String]
  /// Bytes the volume takes in the store, or nil when the store cannot tell.
  func allocatedBytes(of name: String) async -> Int64?
}

extension VolumeStore {
  public func clone(base: DiskAttachment, to name: String) async throws -> DiskAttachment {
    try await clone(base: base, to: name, minimumSizeBytes: 0)
  }

}

public struct FreezePlan: Sendable, Equatable {
  public var volume: String
  public var frozen: DiskAttachment
  public var next: DiskAttachment
  public var previous: DiskAttachment
}
