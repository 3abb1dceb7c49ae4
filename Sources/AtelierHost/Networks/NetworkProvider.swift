import AtelierCore

/// Gives each sandbox its network and the channel on which its agent is reached.
public protocol NetworkProvider: Sendable {
  var name: String { get }
  /// Whether a sandbox's own allow and deny lists can be enforced (`policy.allow`, `.deny`).
  var enforcesDestinationLists: Bool { get }
  /// Allocates what the sandbox needs (ports, TAP, address, its egress rules). Undo with
  /// `release`.
  func attach(sandboxId: String, policy: NetworkPolicy) async throws -> NetworkAttachment
  /// Tears down what the running VM used (TAP device, port forwards). An address lease is
  /// kept, so a stopped sandbox starts again with the same address.
  func release(sandboxId: String, attachment: NetworkAttachment) async
  /// Re-registers the allocation of a sandbox found alive after a manager restart.
  func adopt(sandboxId: String, attachment: NetworkAttachment) async
  /// The sandbox is gone: give its address back.
  func forget(sandboxId: String) async
  /// Removes host state (devices, firewall rules, leases) of sandboxes the manager does not
  /// know; `inUse` answers, just before each removal, whether any sandbox it knows (a row, a
  /// create in flight) has an id starting with the given prefix (TAP names hold only 8
  /// characters of it). Returns what was removed, for the report.
  func removeOrphans(inUse: @Sendable (String) async -> Bool) async -> [String]
}

extension NetworkProvider {
  public var enforcesDestinationLists: Bool { false }
  public func forget(sandboxId: String) async {}
  public func removeOrphans(inUse: @Sendable (String) async -> Bool) async -> [String] { [] }
}

/// Persistent address leases (the manager keeps them in its database), so addresses do not
/// collide after a restart.
public protocol AddressLeases: Sendable {
  /// The host number (last octet) leased to the sandbox, leasing the lowest free one in
  /// `range` when it has none. Throws when the range is full.
  func lease(sandboxId: String, range: ClosedRange<Int>) async throws -> Int
  func releaseLease(sandboxId: String) async
  /// The sandboxes holding a lease.
  func leaseHolders() async -> [String]
}

public struct NetworkError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}
