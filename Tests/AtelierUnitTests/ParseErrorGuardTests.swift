import Foundation
import Hummingbird
import HummingbirdTesting
import HummingbirdWebSocket
import Testing

@testable import AtelierServer

#if canImport(Glibc)
  import Glibc
#endif

/// A request that cannot be parsed gets its connection closed, never held open and silent;
/// a good request on the same server is answered (the positive control).
@Suite struct ParseErrorGuardTests {
  @Test func anUnparsableFirstRequestIsClosedAndGoodOnesAreAnswered() async throws {
    let router = Router(context: BasicWebSocketRequestContext.self)
    router.get("/health") { _, _ in "ok" }
    let app = Application(
      router: router,
      server: .guardedHTTP1WebSocketUpgrade(webSocketRouter: router, configuration: .init()),
      configuration: .init(address: .hostname("127.0.0.1", port: 0)))
    try await app.test(.live) { client in
      let port = try #require(client.port)
      let good = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
      let bad = "GET /health HTTP/1.1\r\nHost: x\r\nX-Test: a\u{0}b\r\n\r\n"
      let goodLast = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
      #expect(try Self.exchange(port: port, [goodLast]).hasPrefix("HTTP/1.1 200"))
      // First request bad: closed at once (before, it waited forever).
      #expect(try Self.exchange(port: port, [bad]) == "")
      // Bad after a good one: Hummingbird's own 400, then close.
      let second = try Self.exchange(port: port, [good, bad])
      #expect(second.contains("HTTP/1.1 400"), "\(second)")
    }
  }

  /// Sends each request in turn and reads until the server closes (5 s at most each read).
  static func exchange(port: Int, _ requests: [String]) throws -> String {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
      }
    }
    guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
    var answer = [UInt8]()
    for (index, request) in requests.enumerated() {
      let bytes = Array(request.utf8)
      _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
      var buffer = [UInt8](repeating: 0, count: 4096)
      while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count < 0 { throw POSIXError(.ETIMEDOUT) }  // held open: the defect
        if count == 0 { return String(decoding: answer, as: UTF8.self) }
        answer += buffer[0..<count]
        // A full answer to a request that is not the last: send the next one.
        if index < requests.count - 1, String(decoding: answer, as: UTF8.self).hasSuffix("ok") {
          break
        }
      }
    }
    return String(decoding: answer, as: UTF8.self)
  }
}
