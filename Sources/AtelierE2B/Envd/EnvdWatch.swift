import AsyncHTTPClient
import AtelierAgentAPI
import AtelierCore
import AtelierHost
import Foundation
import Hummingbird
import NIOCore
import Synchronization

/// `filesystem.Filesystem`'s watches on the agent's (`GET /files/watch`, inotify): `WatchDir`
/// streams the changes; `CreateWatcher`, `GetWatcherEvents` and `RemoveWatcher` (what the
/// sync SDK uses) keep a watch here whose changes wait until they are asked for.
struct EnvdWatch<Context: RequestContext>: Sendable {
  let routes: EnvdRoutes<Context>
  let watchers: EnvdWatchers

  func addRoutes(to router: Router<Context>) {
    routes.serverStream(
      router, "filesystem.Filesystem/WatchDir", Envd.WatchRequest.self,
      keepalive: Data(#"{"keepalive":{}}"#.utf8)
    ) { request, call, sink in
      let response = try await Self.open(request, call)
      try sink.send(Envd.WatchDirResponse(start: Envd.Empty()))
      try await Self.events(response) { try sink.send(Envd.WatchDirResponse(filesystem: $0)) }
    }
    routes.unary(router, "filesystem.Filesystem/CreateWatcher", Envd.WatchRequest.self) {
      request, call in
      Envd.CreateWatcherResponse(
        watcherId: try await watchers.create(call.sandboxId, try await Self.open(request, call)))
    }
    routes.unary(router, "filesystem.Filesystem/GetWatcherEvents", Envd.WatcherRequest.self) {
      request, call in
      Envd.GetWatcherEventsResponse(
        events: try watchers.drain(request.watcherId ?? "", sandbox: call.sandboxId))
    }
    routes.unary(router, "filesystem.Filesystem/RemoveWatcher", Envd.WatcherRequest.self) {
      request, call in
      try watchers.remove(request.watcherId ?? "", sandbox: call.sandboxId)
      return Envd.Empty()
    }
  }

  /// The agent's watch, once it says the watch is in place (changes from then on are seen).
  static func open(_ request: Envd.WatchRequest, _ call: EnvdCall) async throws
    -> HTTPClientResponse
  {
    let path = EnvdFilesystem<Context>.query(try call.path(request.path))
    return try await call.agent.stream(
      .GET,
      "/files/watch?path=\(path)&recursive=\(request.recursive == true)"
        + "&includeEntry=\(request.includeEntry == true)")
  }

  /// Each change of the agent's stream as envd's event, in order, until the stream ends.
  static func events(
    _ response: HTTPClientResponse, _ each: (Envd.FilesystemEvent) throws -> Void
  ) async throws {
    var pending = ByteBuffer()
    for try await chunk in response.body {
      var chunk = chunk
      pending.writeBuffer(&chunk)
      while let newline = pending.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
        let length = newline - pending.readableBytesView.startIndex
        let line = Data(pending.readBytes(length: length) ?? [])
        pending.moveReaderIndex(forwardBy: 1)
        let frame = try JSONDecoder().decode(WatchEventFrame.self, from: line)
        guard frame.type == .event, let name = frame.name, let change = frame.change else {
          continue
        }
        try each(
          Envd.FilesystemEvent(
            name: name, type: "EVENT_TYPE_\(change.rawValue.uppercased())",
            entry: frame.entry.map(EnvdFilesystem<Context>.entry)))
      }
      pending.discardReadBytes()
    }
  }
}

/// The watchers `CreateWatcher` made, each reading its agent stream into a buffer (at most
/// `maxEvents`; older ones go first) until `RemoveWatcher`. At most `maxWatchers` in all.
final class EnvdWatchers: Sendable {
  static let maxWatchers = 256
  static let maxEvents = 10_000

  final class Watcher: Sendable {
    let sandboxId: String
    let events = Mutex<[Envd.FilesystemEvent]>([])
    let reader = Mutex<Task<Void, Never>?>(nil)
    init(sandboxId: String) { self.sandboxId = sandboxId }
  }

  private let watchers = Mutex<[String: Watcher]>([:])

  func create(_ sandboxId: String, _ response: HTTPClientResponse) async throws -> String {
    let id = Identifier.make(length: 16)
    let watcher = Watcher(sandboxId: sandboxId)
    let added = watchers.withLock { watchers in
      guard watchers.count < Self.maxWatchers else { return false }
      watchers[id] = watcher
      return true
    }
    guard added else {
      throw ConnectError(.resourceExhausted, "at most \(Self.maxWatchers) watchers at once")
    }
    let task = Task<Void, Never> {
      try? await EnvdWatch<BasicRequestContext>.events(response) { event in
        watcher.events.withLock { events in
          events.append(event)
          if events.count > Self.maxEvents { events.removeFirst(events.count - Self.maxEvents) }
        }
      }
    }
    watcher.reader.withLock { $0 = task }
    return id
  }

  func drain(_ id: String, sandbox: String) throws -> [Envd.FilesystemEvent] {
    try watcher(id, sandbox).events.withLock { events in
      defer { events = [] }
      return events
    }
  }

  func remove(_ id: String, sandbox: String) throws {
    let watcher = try watcher(id, sandbox)
    _ = watchers.withLock { $0.removeValue(forKey: id) }
    watcher.reader.withLock { $0?.cancel() }
  }

  /// A watcher of this sandbox (another sandbox's is as unknown as none).
  func watcher(_ id: String, _ sandbox: String) throws -> Watcher {
    guard let watcher = watchers.withLock({ $0[id] }), watcher.sandboxId == sandbox else {
      throw ConnectError(.notFound, "no watcher \(id)")
    }
    return watcher
  }
}
