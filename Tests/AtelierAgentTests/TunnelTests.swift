import AtelierAgentAPI
import AtelierCore
import AtelierHost
import AtelierManager
import Foundation
import HummingbirdTesting
import Logging
import NIOCore
import Testing

@testable import AtelierAgent

/// Plain blocking sockets, run off Swift's cooperative threads (the agent's tasks need them).
enum Sockets {
  static func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
      Thread { continuation.resume(returning: body()) }.start()
    }
  }

  static func address(_ host: String, _ port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr(host)
    return address
  }

  static func freePort(_ host: String) -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var bound = address(host, 0)
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, length)
        return getsockname(fd, $0, &length)
      }
    }
    return Int(UInt16(bigEndian: bound.sin_port))
  }

  static func connect(_ host: String, _ port: Int) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var target = address(host, port)
    let result = withUnsafePointer(to: &target) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    if result != 0 {
      close(fd)
      return nil
    }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
  }

  static func send(_ fd: Int32, _ text: String) {
    _ = Array(text.utf8).withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, 0) }
  }

  /// Everything until the peer closes (or the 10 s timeout).
  static func readAll(_ fd: Int32) -> String {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
      let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if count <= 0 { break }
      bytes += buffer[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}

/// A host service: answers `echo:<everything it read>` once its client half-closes, then
/// closes (so it works only if half-close travels through the tunnel).
final class EchoServer: @unchecked Sendable {
  let fd: Int32
  let port: Int

  init() {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var reuse: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
    let port = Sockets.freePort("127.0.0.1")
    self.fd = fd
    self.port = port
    var address = Sockets.address("127.0.0.1", port)
    _ = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    listen(fd, 16)
    Thread { [fd] in
      while true {
        let connection = accept(fd, nil, nil)
        if connection < 0 { return }
        Thread {
          let text = Sockets.readAll(connection)
          Sockets.send(connection, "echo:\(text)")
          close(connection)
        }.start()
      }
    }.start()
  }

  func stop() { shutdown(fd, Int32(SHUT_RDWR)) }
}

@Suite(.timeLimit(.minutes(2))) struct TunnelTests {
  func configure(_ client: some TestClientProtocol, ports: [Int], maxTunnels: Int) async throws {
    let body = try JSONEncoder().encode(GuestServicesRequest(ports: ports, maxTunnels: maxTunnels))
    try await client.execute(
      uri: "/system/guest-services", method: .put, headers: TestAgent.bearer(),
      body: ByteBuffer(bytes: body)
    ) { #expect($0.status == .ok, "\($0.text)") }
  }

  @Test func guestConnectionsReachOnlyTheConfiguredServiceWithinTheCap() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    let echo = EchoServer()
    defer { echo.stop() }
    let listed = Sockets.freePort(GuestServices.guestAddress)
    let unlisted = Sockets.freePort(GuestServices.guestAddress)
    try await agent.app.test(.live) { client in
      // The agent listens on both; the manager has a host service for one only.
      try await configure(client, ports: [listed, unlisted], maxTunnels: 2)
      let tunnels = GuestServiceTunnels(
        services: [GuestService(guestPort: listed, hostAddress: "127.0.0.1", hostPort: echo.port)],
        maxTunnels: 2, poolSize: 1, logger: Logger(label: "test.tunnels"))
      let agentClient = AgentClient(
        endpoint: .tcp(host: "127.0.0.1", port: try #require(client.port)), key: TestAgent.key)
      await tunnels.start("sbxtest", agent: agentClient)
      defer { Task { await tunnels.stopAll() } }

      // A guest process: write, half-close, read the answer (which needs the half-close).
      let answer = await Sockets.offPool { () -> String in
        guard let fd = Sockets.connect(GuestServices.guestAddress, listed) else { return "" }
        defer { close(fd) }
        Sockets.send(fd, "hello")
        shutdown(fd, Int32(SHUT_WR))
        return Sockets.readAll(fd)
      }
      #expect(answer == "echo:hello")

      // A port the manager has no service for: closed without a byte (the manager refuses
      // what the guest names beyond its list).
      let refused = await Sockets.offPool { () -> String in
        guard let fd = Sockets.connect(GuestServices.guestAddress, unlisted) else { return "x" }
        defer { close(fd) }
        Sockets.send(fd, "hello")
        shutdown(fd, Int32(SHUT_WR))
        return Sockets.readAll(fd)
      }
      #expect(refused == "")

      // The cap: two held open, the third refused at once, the two still answered after.
      let held = await Sockets.offPool { () -> [Int32] in
        (0..<2).compactMap { _ in
          let fd = Sockets.connect(GuestServices.guestAddress, listed)
          if let fd { Sockets.send(fd, "held") }
          return fd
        }
      }
      #expect(held.count == 2)
      let statusDeadline = ContinuousClock.now + .seconds(10)
      while agent.routes.guestServices.status.activeTunnels < 2
        && ContinuousClock.now < statusDeadline
      {
        try await Task.sleep(for: .milliseconds(20))
      }
      #expect(agent.routes.guestServices.status.activeTunnels == 2)
      let third = await Sockets.offPool { () -> String in
        guard let fd = Sockets.connect(GuestServices.guestAddress, listed) else { return "x" }
        defer { close(fd) }
        Sockets.send(fd, "third")
        shutdown(fd, Int32(SHUT_WR))
        return Sockets.readAll(fd)
      }
      #expect(third == "")
      #expect(agent.routes.guestServices.status.refused >= 1)
      let answers = await Sockets.offPool { () -> [String] in
        held.map { fd in
          defer { close(fd) }
          shutdown(fd, Int32(SHUT_WR))
          return Sockets.readAll(fd)
        }
      }
      #expect(answers == ["echo:held", "echo:held"])

      // Stopping the pool closes the idle tunnels on the agent.
      await tunnels.stop("sbxtest")
      let deadline = ContinuousClock.now + .seconds(10)
      while agent.routes.guestServices.status.idleTunnels > 0 && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(20))
      }
      #expect(agent.routes.guestServices.status.idleTunnels == 0)
    }
  }

  @Test func configurationIsValidated() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.router) { client in
      for request in [
        GuestServicesRequest(ports: [0], maxTunnels: 1),
        GuestServicesRequest(ports: [80, 80], maxTunnels: 1),
        GuestServicesRequest(ports: [80], maxTunnels: 0),
      ] {
        try await client.execute(
          uri: "/system/guest-services", method: .put, headers: TestAgent.bearer(),
          body: ByteBuffer(bytes: try JSONEncoder().encode(request))
        ) { #expect($0.status == .badRequest, "\(request)") }
      }
    }
  }
}
