import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Blocking AF_UNIX stream sockets (close-on-exec, so VM processes never inherit them).
enum UnixSocket {
  struct Failure: Error, CustomStringConvertible {
    var description: String
  }

  static func lastError() -> String { String(cString: strerror(errno)) }

  static func address(_ path: String) throws -> sockaddr_un {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
      throw Failure(description: "socket path too long: \(path)")
    }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
      raw.copyBytes(from: bytes)
      raw[bytes.count] = 0
    }
    return address
  }

  static func connect(_ path: String) throws -> Int32 {
    var address = try address(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw Failure(description: "socket: \(lastError())") }
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard connected == 0 else {
      let reason = lastError()
      close(fd)
      throw Failure(description: "cannot connect to \(path): \(reason)")
    }
    return fd
  }

  /// Binds and listens on `path` (removing a stale socket file first).
  static func listen(_ path: String, backlog: Int32 = 16) throws -> Int32 {
    var address = try address(path)
    unlink(path)
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw Failure(description: "socket: \(lastError())") }
    let bound = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
      }
    }
    guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
      let reason = lastError()
      close(fd)
      throw Failure(description: "cannot listen on \(path): \(reason)")
    }
    return fd
  }

  /// Receive and send timeouts; 0 means none.
  static func setTimeouts(_ fd: Int32, seconds: Int) {
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
  }

  /// Writes every byte (MSG_NOSIGNAL: a vanished peer is an error, not SIGPIPE).
  static func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw in
      var offset = 0
      while offset < raw.count {
        let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
        if n > 0 {
          offset += n
        } else if n < 0 && errno == EINTR {
          continue
        } else {
          return false
        }
      }
      return true
    }
  }

  /// Up to 64 KiB; empty at end of stream, nil on error (including a timeout).
  static func receive(_ fd: Int32, size: Int = 65536) -> [UInt8]? {
    var buffer = [UInt8](repeating: 0, count: size)
    while true {
      let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if n >= 0 { return Array(buffer[0..<n]) }
      if errno != EINTR { return nil }
    }
  }
}
