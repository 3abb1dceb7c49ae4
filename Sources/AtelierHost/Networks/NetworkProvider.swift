/// Gives each sandbox its network and the channel on which its agent is reached.
public protocol NetworkProvider: Sendable {
  var name: String { get }
  /// Allocates what the sandbox needs (ports, TAP, address). Undo with `release`.
  func attach(sandboxId: String) async throws -> NetworkAttachment
  func release(sandboxId: String, attachment: NetworkAttachment) async
  /// Re-registers the allocation of a sandbox found alive after a manager restart.
  func adopt(sandboxId: String, attachment: NetworkAttachment) async
}

public struct NetworkError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}
