import AtelierProcess
import CAtelierSys
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

public struct VsockError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// How the host reaches a guest's vsock.
public enum VsockTarget: Hashable, Sendable, CustomStringConvertible {
  /// Firecracker's hybrid vsock: a Unix socket, `CONNECT <port>\n`, then `OK …\n`.
  case hybrid(path: String)
  /// The kernel's AF_VSOCK to a guest CID (QEMU with vhost-vsock).
  case kernel(cid: UInt32)

  public var description: String {
    switch self {
    case .hybrid(let path): "vsock socket \(path)"
    case .kernel(let cid): "vsock CID \(cid)"
    }
  }
}

/// Makes a guest's vsock port reachable over loopback TCP, for clients that only speak TCP
/// (AsyncHTTPClient, the WebSocket client). Each accepted connection gets its own connection to
/// the guest (for Firecracker's hybrid vsock socket after the `CONNECT <port>\n` / `OK …\n`
/// handshake), then a byte relay both ways until either side closes. Blocking sockets on plain
/// threads: two per live connection, one for accepting. It runs until `stop()`.
public final class VsockForwarder: Sendable {
  public let target: VsockTarget
  public let vsockPort: Int
  public let host = "127.0.0.1"
  /// The ephemeral loopback port this forwarder listens on.
  public let port: Int
  let handshakeTimeout: Duration
  let logger: Logger
  private let listener: Int32

  private struct State {
    var stopped = false
    /// Descriptors of live connections (both ends), shut down by `stop`. A descriptor leaves
    /// this set before it is closed, so `stop` never touches a reused number.
    var open: Set<Int32> = []
  }
  private let state = Mutex(State())

  public init(
    target: VsockTarget, vsockPort: Int, handshakeTimeout: Duration = .seconds(10),
    logger: Logger = Logger(label: "atelier.vmm.vsock")
  ) throws {
    self.target = target
    self.vsockPort = vsockPort
    self.handshakeTimeout = handshakeTimeout
    self.logger = logger
    (listener, port) = try Self.listenOnLoopback()
    OSThread { [self] in self.acceptLoop() }.start()
  }

  /// Stops listening and cuts every live connection. Idempotent.
  public func stop() {
    state.withLock { state in
      guard !state.stopped else { return }
      state.stopped = true
      // Wakes the blocked accept(2); the accept thread closes the listener.
      shutdown(listener, Int32(SHUT_RDWR))
      for fd in state.open { shutdown(fd, Int32(SHUT_RDWR)) }
    }
  }

  public var isStopped: Bool { state.withLock { $0.stopped } }

  static func listenOnLoopback() throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw VsockError("socket: \(UnixSocket.lastError())") }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr = in_addr(s_addr: UInt32(0x7f00_0001).bigEndian)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
        bind(fd, pointer, length) == 0 && Glibc.listen(fd, 64) == 0
          && getsockname(fd, pointer, &length) == 0
      }
    }
    guard bound else {
      let reason = UnixSocket.lastError()
      close(fd)
      throw VsockError("cannot listen on 127.0.0.1: \(reason)")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
  }

  private func acceptLoop() {
    defer { close(listener) }
    while true {
      let client = accept(listener, nil, nil)
      if client < 0 {
        if isStopped { return }
        if errno == EINTR || errno == ECONNABORTED { continue }
        // Out of descriptors or similar: back off instead of spinning.
        logger.warning("vsock forwarder accept failed: \(UnixSocket.lastError())")
        usleep(100_000)
        continue
      }
      // accept4 is not visible from Swift; spawned children close stray descriptors anyway.
      _ = fcntl(client, F_SETFD, FD_CLOEXEC)
      var one: Int32 = 1
      setsockopt(
        client, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
      guard register(client) else {
        close(client)
        return
      }
      OSThread { [self] in self.serve(client) }.start()
    }
  }

  /// Adds a live descriptor; false once stopped (the caller closes it).
  private func register(_ fd: Int32) -> Bool {
    state.withLock { state in
      guard !state.stopped else { return false }
      state.open.insert(fd)
      return true
    }
  }

  private func release(_ fd: Int32) {
    state.withLock { _ = $0.open.remove(fd) }
    close(fd)
  }

  private func serve(_ client: Int32) {
    let guest: Int32
    do {
      guest = try connectToGuest()
    } catch {
      // Closing without an answer is what the TCP client sees as a failed connection.
      logger.debug(
        "vsock connection refused",
        metadata: ["target": "\(target)", "port": "\(vsockPort)", "error": "\(error)"])
      release(client)
      return
    }
    let relay = Relay(client: client, guest: guest, forwarder: self)
    OSThread { relay.pump(from: guest, to: client) }.start()
    relay.pump(from: client, to: guest)
  }

  private func connectToGuest() throws -> Int32 {
    switch target {
    case .hybrid(let path): return try connectToHybridVsock(path)
    case .kernel(let cid):
      let fd = atelier_vsock_connect(cid, UInt32(vsockPort))
      guard fd >= 0 else {
        throw VsockError(
          "cannot connect to CID \(cid) port \(vsockPort): \(UnixSocket.lastError())")
      }
      guard register(fd) else {
        close(fd)
        throw VsockError("forwarder stopped")
      }
      return fd
    }
  }

  /// Connects to the vsock socket and completes the handshake. The answer is read a byte at a
  /// time so that nothing the guest sends after the `OK` line is consumed here.
  private func connectToHybridVsock(_ path: String) throws -> Int32 {
    let fd = try UnixSocket.connect(path)
    guard register(fd) else {
      close(fd)
      throw VsockError("forwarder stopped")
    }
    do {
      UnixSocket.setTimeouts(fd, seconds: max(1, Int(handshakeTimeout.components.seconds)))
      guard UnixSocket.sendAll(fd, Array("CONNECT \(vsockPort)\n".utf8)) else {
        throw VsockError("cannot send CONNECT: \(UnixSocket.lastError())")
      }
      var line: [UInt8] = []
      while true {
        guard line.count < 256, let byte = UnixSocket.receive(fd, size: 1), byte.count == 1 else {
          throw VsockError("no answer to CONNECT \(vsockPort)")
        }
        if byte[0] == 10 { break }
        line += byte
      }
      let answer = String(decoding: line, as: UTF8.self)
      guard answer.hasPrefix("OK") else {
        throw VsockError("CONNECT \(vsockPort) refused: \(answer)")
      }
      UnixSocket.setTimeouts(fd, seconds: 0)
      return fd
    } catch {
      release(fd)
      throw error
    }
  }

  fileprivate final class Relay: Sendable {
    let client: Int32
    let guest: Int32
    let forwarder: VsockForwarder
    private let finished = Mutex(0)

    init(client: Int32, guest: Int32, forwarder: VsockForwarder) {
      self.client = client
      self.guest = guest
      self.forwarder = forwarder
    }

    /// Copies until end of stream or an error on either side, then tears both down; the second
    /// direction to end closes the descriptors.
    func pump(from source: Int32, to destination: Int32) {
      while let chunk = UnixSocket.receive(source), !chunk.isEmpty {
        if !UnixSocket.sendAll(destination, chunk) { break }
      }
      shutdown(client, Int32(SHUT_RDWR))
      shutdown(guest, Int32(SHUT_RDWR))
      let last = finished.withLock { count in
        count += 1
        return count == 2
      }
      if last {
        forwarder.release(client)
        forwarder.release(guest)
      }
    }
  }
}

/// One forwarder per (guest vsock, port), created on first use.
public final class VsockForwarders: Sendable {
  public static let shared = VsockForwarders()

  struct Key: Hashable {
    var target: VsockTarget
    var port: Int
  }
  private let forwarders = Mutex<[Key: VsockForwarder]>([:])
  let logger: Logger

  public init(logger: Logger = Logger(label: "atelier.vmm.vsock")) {
    self.logger = logger
  }

  /// The forwarder to `port` of the guest at `target`, started if needed.
  public func forwarder(to target: VsockTarget, port: Int) throws -> VsockForwarder {
    try forwarders.withLock { forwarders in
      let key = Key(target: target, port: port)
      if let existing = forwarders[key], !existing.isStopped { return existing }
      let forwarder = try VsockForwarder(target: target, vsockPort: port, logger: logger)
      forwarders[key] = forwarder
      return forwarder
    }
  }

  public func stop(_ target: VsockTarget, port: Int) {
    forwarders.withLock { $0.removeValue(forKey: Key(target: target, port: port)) }?.stop()
  }

  /// Stops every forwarder into one VM (it is gone, or about to be).
  public func stopAll(_ target: VsockTarget) {
    let stopped = forwarders.withLock { forwarders in
      let keys = forwarders.keys.filter { $0.target == target }
      return keys.compactMap { forwarders.removeValue(forKey: $0) }
    }
    for forwarder in stopped { forwarder.stop() }
  }

  public var count: Int { forwarders.withLock { $0.count } }
}

extension AgentEndpoint {
  /// The guest vsock behind this endpoint, when it is one.
  public var vsockTarget: (target: VsockTarget, port: Int)? {
    switch self {
    case .tcp: nil
    case .hybridVsock(let path, let port): (.hybrid(path: path), port)
    case .vsock(let cid, let port): (.kernel(cid: cid), port)
    }
  }

  /// Where a TCP-only client reaches this agent: a `.tcp` endpoint as it is; a vsock through
  /// a loopback forwarder from `registry` (started on first use).
  public func tcpAddress(using registry: VsockForwarders = .shared) throws -> (
    host: String, port: Int
  ) {
    if case .tcp(let host, let port) = self { return (host, port) }
    guard let (target, port) = vsockTarget else { throw VsockError("not a vsock endpoint") }
    if case .hybrid(let path) = target, path.isEmpty {
      throw VsockError("the agent's vsock socket path is not known yet")
    }
    if case .kernel(let cid) = target, cid == 0 {
      throw VsockError("the guest's vsock CID is not known yet")
    }
    let forwarder = try registry.forwarder(to: target, port: port)
    return (forwarder.host, forwarder.port)
  }

  /// This endpoint as `.tcp`, for `AgentClient` and the agent proxy.
  public func overTCP(using registry: VsockForwarders = .shared) throws -> AgentEndpoint {
    let (host, port) = try tcpAddress(using: registry)
    return .tcp(host: host, port: port)
  }
}
