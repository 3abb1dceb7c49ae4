import AtelierCore
import Crypto
import Foundation

/// Signs browser session cookies and their CSRF tokens with a key of this manager's own (a file
/// in the data folder, 0600, made once). A cookie says which session and until when, and
/// carries a MAC over both: a forged or altered one fails the MAC, an old one its expiry, a
/// revoked one the database (its row is gone).
struct SessionSigner: Sendable {
  /// The key's bytes (`SymmetricKey` itself is not `Sendable`).
  let keyBytes: Data
  var key: SymmetricKey { SymmetricKey(data: keyBytes) }

  init(key: SymmetricKey) { keyBytes = key.withUnsafeBytes { Data($0) } }

  static let cookieName = "atelier_session"
  static let csrfHeader = "X-CSRF-Token"
  static let lifetime: TimeInterval = 12 * 3600

  /// The signing key at `path`, made (32 random bytes, 0600) when there is none.
  static func load(path: String) throws -> SessionSigner {
    if let data = FileManager.default.contents(atPath: path), data.count == 32 {
      return SessionSigner(key: SymmetricKey(data: data))
    }
    let fresh = SymmetricKey(size: .bits256)
    let bytes = fresh.withUnsafeBytes { Data($0) }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw AtelierError.internal("cannot write the session key to \(path)")
    }
    fchmod(fd, 0o600)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    fsync(fd)
    close(fd)
    guard written == 32 else { throw AtelierError.internal("cannot write the session key") }
    return SessionSigner(key: fresh)
  }

  func mac(_ text: String) -> String {
    Data(HMAC<SHA256>.authenticationCode(for: Data(text.utf8), using: key))
      .map { String(format: "%02x", $0) }.joined()
  }

  /// `<session id>.<expiry, unix seconds>.<MAC>`.
  func cookieValue(sessionId: String, expiresAt: Date) -> String {
    let payload = "\(sessionId).\(Int64(expiresAt.timeIntervalSince1970))"
    return "\(payload).\(mac(payload))"
  }

  /// The session a cookie names, if its MAC holds and it has not expired.
  func verify(_ value: String, now: Date = Date()) -> String? {
    let parts = value.split(separator: ".", omittingEmptySubsequences: false)
    guard parts.count == 3, let expiry = Int64(parts[1]),
      Identifier.isValid(String(parts[0])),
      let given = Data(hexadecimal: String(parts[2]))
    else { return nil }
    let payload = "\(parts[0]).\(parts[1])"
    guard
      HMAC<SHA256>.isValidAuthenticationCode(given, authenticating: Data(payload.utf8), using: key),
      Date(timeIntervalSince1970: TimeInterval(expiry)) > now
    else { return nil }
    return String(parts[0])
  }

  /// The token cookie-authenticated writes must echo in `X-CSRF-Token` (another site can make
  /// a browser send the cookie, not read this).
  func csrfToken(sessionId: String) -> String { mac("csrf:\(sessionId)") }

  func isValidCSRF(_ token: String?, sessionId: String) -> Bool {
    guard let token, let given = Data(hexadecimal: token) else { return false }
    return HMAC<SHA256>.isValidAuthenticationCode(
      given, authenticating: Data("csrf:\(sessionId)".utf8), using: key)
  }
}

extension Data {
  /// Bytes from an even number of hex digits, else nil.
  init?(hexadecimal text: String) {
    guard text.count % 2 == 0, text.count <= 256 else { return nil }
    var bytes: [UInt8] = []
    var index = text.startIndex
    while index < text.endIndex {
      let next = text.index(index, offsetBy: 2)
      guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
      bytes.append(byte)
      index = next
    }
    self.init(bytes)
  }
}
