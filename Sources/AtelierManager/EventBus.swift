import AtelierCore
import Foundation
import Synchronization

/// Sandbox and snapshot events for `GET /api/events`: numbered, kept in a bounded buffer so a
/// client that reconnects with `Last-Event-ID` gets what it missed. Publishing is synchronous,
/// so events leave in the order the changes happened.
public final class EventBus: Sendable {
  public struct Event: Sendable {
    public var id: Int
    public var type: String
    /// The JSON `data` of the event.
    public var data: Data
    /// Whose sandbox or snapshot it is about: subscribers see only what they may see.
    public var ownerId: String?
  }

  struct State {
    var buffer: [Event] = []
    var nextId: Int
    var subscribers: [Int: AsyncStream<Event>.Continuation] = [:]
    var nextSubscriber = 0
  }

  private let state: Mutex<State>
  let capacity: Int

  /// Ids start at the clock in milliseconds, so they keep growing across manager restarts: a
  /// client resuming with an id from before a restart gets everything since.
  public init(
    capacity: Int = 1000, firstId: Int = Int(Date().timeIntervalSince1970 * 1000)
  ) {
    self.capacity = capacity
    state = Mutex(State(nextId: firstId))
  }

  public func publish<T: Encodable>(_ type: String, _ payload: T) {
    let data = (try? JSONEncoder.atelier.encode(payload)) ?? Data("{}".utf8)
    let ownerId = (payload as? any OwnedEvent)?.ownerId
    state.withLock { state in
      let event = Event(id: state.nextId, type: type, data: data, ownerId: ownerId)
      state.nextId += 1
      state.buffer.append(event)
      if state.buffer.count > capacity { state.buffer.removeFirst(state.buffer.count - capacity) }
      for subscriber in state.subscribers.values { subscriber.yield(event) }
    }
  }

  /// Events after `lastId` still in the buffer, then every new one. Finish by cancelling.
  public func subscribe(after lastId: Int?) -> AsyncStream<Event> {
    let (stream, continuation) = AsyncStream.makeStream(
      of: Event.self, bufferingPolicy: .bufferingNewest(capacity))
    let key = state.withLock { state in
      if let lastId {
        for event in state.buffer where event.id > lastId { continuation.yield(event) }
      }
      let key = state.nextSubscriber
      state.nextSubscriber += 1
      state.subscribers[key] = continuation
      return key
    }
    continuation.onTermination = { [weak self] _ in
      _ = self?.state.withLock { $0.subscribers.removeValue(forKey: key) }
    }
    return stream
  }
}

/// An event about something someone owns.
protocol OwnedEvent { var ownerId: String? { get } }

/// The payload of `sandbox.*` events.
public struct SandboxEvent: Codable, Sendable, OwnedEvent {
  public var sandbox: SandboxInfo
  public var previousStatus: String?
  var ownerId: String? { sandbox.ownerId }
}

/// The payload of `snapshot.*` events.
public struct SnapshotEvent: Codable, Sendable, OwnedEvent {
  public var snapshot: SnapshotInfo
  var ownerId: String? { snapshot.ownerId }
}
