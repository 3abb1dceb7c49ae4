import AtelierAgentAPI
import NIOCore
import Synchronization

/// A body that may be read once. A second read of Hummingbird's request body, or of the
/// HTTP client's response body, traps and would end the manager: the HTTP client retries a
/// request whose pooled connection turned out closed (an agent may close one after answering
/// early, say with a 409, without reading the body), and one hostile guest must not bring the
/// manager down. A second pass fails instead. (The agent proxy's bodies and the E2B
/// adapter's uploads.)
public struct SinglePassSequence<Base: AsyncSequence & Sendable>: AsyncSequence, Sendable
where Base.Element == ByteBuffer {
  public typealias Element = ByteBuffer
  let base: Base
  let started = StartedFlag()

  public init(_ base: Base) { self.base = base }

  final class StartedFlag: Sendable {
    let value = Mutex(false)
  }

  public struct AsyncIterator: AsyncIteratorProtocol {
    var base: Base.AsyncIterator?
    public mutating func next() async throws -> ByteBuffer? {
      guard base != nil else {
        throw AtelierError(.unavailable, "a body was read twice: the agent dropped a connection")
      }
      return try await base?.next()
    }
  }

  public func makeAsyncIterator() -> AsyncIterator {
    let first = started.value.withLock { started in
      defer { started = true }
      return !started
    }
    return AsyncIterator(base: first ? base.makeAsyncIterator() : nil)
  }
}
