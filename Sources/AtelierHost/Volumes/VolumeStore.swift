/// Sandbox disks. Every volume is a copy-on-write clone of a base (an image or a snapshot's
/// disk), made in O(1) on the common path.
public protocol VolumeStore: Sendable {
  var name: String { get }
  /// Creates volume `name` as a clone of `base`; the result is what the VMM attaches.
  func clone(base: DiskAttachment, to name: String) async throws -> DiskAttachment
  func remove(_ name: String) async throws
  /// Names of all volumes in the store.
  func list() async throws -> [String]
}
