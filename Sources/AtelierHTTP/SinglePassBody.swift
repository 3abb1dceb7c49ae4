import AtelierAgentAPI
import Hummingbird
import NIOCore
import Synchronization

/// A request body the HTTP client may read once. The client retries a request whose pooled
/// connection turned out closed (an agent may close one after answering early, say with a
/// 409, without reading the body), and a second read of Hummingbird's request body traps:
/// one hostile guest would bring the manager down. A second pass fails the request instead.
/// (The agent proxy's uploads and the E2B adapter's.)
public struct SinglePassBody: AsyncSequence, Sendable {
  public typealias Element = ByteBuffer
  let body: RequestBody
  let started = StartedFlag()

  public init(body: RequestBody) { self.body = body }

  final class StartedFlag: Sendable {
    let value = Mutex(false)
  }

  public struct AsyncIterator: AsyncIteratorProtocol {
    var base: RequestBody.AsyncIterator?
    public mutating func next() async throws -> ByteBuffer? {
      guard base != nil else {
        throw AtelierError(.unavailable, "the agent dropped the connection during an upload")
      }
      return try await base?.next()
    }
  }

  public func makeAsyncIterator() -> AsyncIterator {
    let first = started.value.withLock { started in
      defer { started = true }
      return !started
    }
    return AsyncIterator(base: first ? body.makeAsyncIterator() : nil)
  }
}
