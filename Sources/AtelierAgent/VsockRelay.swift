import AtelierProcess
import CAtelierSys
import Logging

#if canImport(Glibc)
  import Glibc
#endif

/// Accepts AF_VSOCK connections (Firecracker's hybrid vsock ends here) and relays each to the
/// agent's loopback TCP listener, so one HTTP server serves both.
enum VsockRelay {
  static func start(vsockPort: Int, tcpPort: Int, logger: Logger) {
    let listener = atelier_vsock_listen(UInt32(vsockPort))
    guard listener >= 0 else {
      logger.error("cannot listen on vsock port \(vsockPort): \(String(cString: strerror(errno)))")
      return
    }
    logger.info("relaying vsock port \(vsockPort) to 127.0.0.1:\(tcpPort)")
    OSThread {
      while true {
        let connection = accept(listener, nil, nil)
        if connection < 0 {
          if errno == EINTR || errno == ECONNABORTED { continue }
          logger.error("vsock accept failed: \(String(cString: strerror(errno)))")
          return
        }
        let upstream = atelier_connect_loopback(UInt16(tcpPort))
        guard upstream >= 0 else {
          close(connection)
          continue
        }
        OSThread { atelier_relay(connection, upstream) }.start()
      }
    }.start()
  }
}
