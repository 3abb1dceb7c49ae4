import AtelierAgentAPI
import AtelierHTTP
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import Synchronization

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

/// The guest side of host services: the agent listens on `127.0.0.2:<port>` for each guest
/// port the manager names, and carries each connection a guest process opens over one of the
/// idle tunnels (WebSockets) the manager keeps open to it. The manager decides where the
/// bytes go; the guest only ever names a port.
final class GuestServiceHub: Sendable {
  struct State {
    var idle: [Tunnel] = []
    var active: [Int: Tunnel] = [:]
    var maxTunnels = 64
    var refused = 0
    var listeners: [Int: Task<Void, Never>] = [:]
    var nextId = 0
  }

  let state = Mutex(State())
  let logger: Logger
  let listenAddress: String
  /// How long a guest connection waits for an idle tunnel before it is refused.
  let claimTimeout: Duration

  init(
    logger: Logger, listenAddress: String = GuestServices.guestAddress,
    claimTimeout: Duration = .seconds(3)
  ) {
    self.logger = logger
    self.listenAddress = listenAddress
    self.claimTimeout = claimTimeout
  }

  var status: GuestServicesStatus {
    state.withLock {
      GuestServicesStatus(
        ports: $0.listeners.keys.sorted(), maxTunnels: $0.maxTunnels,
        activeTunnels: $0.active.count, idleTunnels: $0.idle.count, refused: $0.refused)
    }
  }

  // MARK: Listeners

  /// Listens on exactly `ports` (closing the others) with at most `maxTunnels` in use.
  func configure(_ request: GuestServicesRequest) async throws -> GuestServicesStatus {
    guard request.ports.allSatisfy({ (1...65535).contains($0) }),
      Set(request.ports).count == request.ports.count
    else { throw APIError.badRequest("ports must be distinct, each 1–65535") }
    guard GuestServices.maxTunnelsRange.contains(request.maxTunnels) else {
      throw APIError.badRequest("maxTunnels must be between 1 and 4096")
    }
    let wanted = Set(request.ports)
    let (stale, missing) = state.withLock { state in
      state.maxTunnels = request.maxTunnels
      let stale = state.listeners.filter { !wanted.contains($0.key) }
      for port in stale.keys { state.listeners[port] = nil }
      return (stale.values, wanted.subtracting(state.listeners.keys))
    }
    stale.forEach { $0.cancel() }
    for port in missing.sorted() {
      let server = try await bind(port: port)
      let task = Task { await self.accept(server, port: port) }
      state.withLock { $0.listeners[port] = task }
    }
    logger.info("guest services", metadata: ["ports": "\(request.ports.sorted())"])
    return status
  }

  typealias GuestChannel = NIOAsyncChannel<ByteBuffer, ByteBuffer>

  func bind(port: Int) async throws -> NIOAsyncChannel<GuestChannel, Never> {
    do {
      return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.allowRemoteHalfClosure, value: true)
        .bind(host: listenAddress, port: port) { child in
          child.eventLoop.makeCompletedFuture {
            try GuestChannel(
              wrappingChannelSynchronously: child,
              configuration: .init(isOutboundHalfClosureEnabled: true))
          }
        }
    } catch {
      throw APIError.internalError("cannot listen on \(listenAddress):\(port): \(error)")
    }
  }

  func accept(_ server: NIOAsyncChannel<GuestChannel, Never>, port: Int) async {
    do {
      try await server.executeThenClose { connections in
        try await withThrowingDiscardingTaskGroup { group in
          for try await connection in connections {
            group.addTask { await self.carry(connection, port: port) }
          }
        }
      }
    } catch {
      if !Task.isCancelled { logger.warning("guest service port \(port) failed: \(error)") }
    }
  }

  /// One guest connection, over a tunnel until both sides are done.
  func carry(_ connection: GuestChannel, port: Int) async {
    guard let tunnel = await claim(port: port) else {
      try? await connection.channel.close()
      return
    }
    defer { release(tunnel) }
    do {
      try await connection.executeThenClose { inbound, outbound in
        tunnel.attach(outbound)
        await withTaskGroup(of: Void.self) { group in
          group.addTask {
            do {
              for try await buffer in inbound { try await tunnel.outbound.write(.binary(buffer)) }
              try await tunnel.send(TunnelFrame(type: .eof))
            } catch {
              // The guest side broke (or this task was cancelled): the tunnel goes too.
              try? await tunnel.outbound.close(.goingAway, reason: nil)
            }
          }
          // Until the manager closes the tunnel: both directions ended, or it gave up.
          await tunnel.waitUntilClosed()
          group.cancelAll()
        }
      }
    } catch {
      logger.debug("guest service connection ended: \(error)")
    }
  }

  // MARK: Tunnels

  /// Takes an idle tunnel and opens it for `port`; nil (the guest connection is refused)
  /// when the limit is reached or none came in time.
  func claim(port: Int) async -> Tunnel? {
    let deadline = ContinuousClock.now + claimTimeout
    while true {
      enum Next {
        case tunnel(Tunnel)
        case wait
        case refuse
      }
      let next: Next = state.withLock { state in
        guard state.active.count < state.maxTunnels else {
          state.refused += 1
          return .refuse
        }
        guard !state.idle.isEmpty else {
          if ContinuousClock.now >= deadline {
            state.refused += 1
            return .refuse
          }
          return .wait
        }
        let tunnel = state.idle.removeFirst()
        state.active[tunnel.id] = tunnel
        return .tunnel(tunnel)
      }
      switch next {
      case .refuse:
        logger.warning("guest service connection refused", metadata: ["port": "\(port)"])
        return nil
      case .wait:
        try? await Task.sleep(for: .milliseconds(10))
      case .tunnel(let tunnel):
        do {
          try await tunnel.send(TunnelFrame(type: .open, port: port))
          return tunnel
        } catch {
          release(tunnel)  // a tunnel that died while idle: try the next
        }
      }
    }
  }

  func release(_ tunnel: Tunnel) {
    _ = state.withLock { $0.active.removeValue(forKey: tunnel.id) }
  }

  /// Serves one tunnel WebSocket from the manager: idle until claimed, then carries bytes
  /// from the manager to the guest connection until the manager closes it.
  func serveTunnel(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter)
    async throws
  {
    let tunnel = state.withLock { state in
      state.nextId += 1
      let tunnel = Tunnel(id: state.nextId, outbound: outbound)
      state.idle.append(tunnel)
      return tunnel
    }
    defer {
      state.withLock { $0.idle.removeAll { $0.id == tunnel.id } }
      tunnel.close()
    }
    for try await message in inbound.messages(maxSize: 1 << 20) {
      guard let guest = tunnel.guest else { return }  // nothing may come before `open`
      switch message {
      case .binary(let buffer):
        do { try await guest.write(buffer) } catch { return }
      case .text(let text):
        guard let frame = try? JSONDecoder().decode(TunnelFrame.self, from: Data(text.utf8)),
          frame.type == .eof
        else { return }
        guest.finish()  // half-close: the guest reads EOF, and may still write
      }
    }
  }

  /// After a restore: the tunnels and connections of before lead nowhere (the manager that
  /// held them is not this VM's); drop them so only fresh ones are used.
  func dropAllTunnels() {
    let tunnels = state.withLock { state in
      defer {
        state.idle = []
        state.active = [:]
      }
      return state.idle + state.active.values
    }
    for tunnel in tunnels {
      tunnel.close()
      Task { try? await tunnel.outbound.close(.goingAway, reason: "restored") }
    }
  }
}

/// One tunnel WebSocket as the agent sees it.
final class Tunnel: Sendable {
  let id: Int
  let outbound: WebSocketOutboundWriter
  private let attached = Mutex<NIOAsyncChannelOutboundWriter<ByteBuffer>?>(nil)
  private let closed = Mutex<(done: Bool, waiters: [CheckedContinuation<Void, Never>])>(
    (false, []))

  init(id: Int, outbound: WebSocketOutboundWriter) {
    self.id = id
    self.outbound = outbound
  }

  var guest: NIOAsyncChannelOutboundWriter<ByteBuffer>? { attached.withLock { $0 } }

  func attach(_ writer: NIOAsyncChannelOutboundWriter<ByteBuffer>) {
    attached.withLock { $0 = writer }
  }

  func send(_ frame: TunnelFrame) async throws {
    let data = try JSONEncoder().encode(frame)
    try await outbound.write(.text(String(decoding: data, as: UTF8.self)))
  }

  /// The WebSocket ended: whoever waits for it goes on.
  func close() {
    let waiters = closed.withLock { state in
      defer { state = (true, []) }
      return state.waiters
    }
    waiters.forEach { $0.resume() }
  }

  func waitUntilClosed() async {
    await withCheckedContinuation { continuation in
      let done = closed.withLock { state in
        if !state.done { state.waiters.append(continuation) }
        return state.done
      }
      if done { continuation.resume() }
    }
  }
}
