import AtelierCore
import AtelierStore
import Foundation

/// API tokens: made here, shown once, stored as hashes. The manager makes the first one at
/// first start; `atelier token` makes, lists and revokes others on the manager's host.
public enum APITokens {
  /// A new random token (`atl_` and 48 hex digits: 192 bits).
  static func generate() -> String {
    var generator = SystemRandomNumberGenerator()
    let bytes = (0..<24).map { _ in UInt8.random(in: 0...255, using: &generator) }
    return "atl_" + bytes.map { String(format: "%02x", $0) }.joined()
  }

  /// Stores a new token named `name` and returns it (the only time it is seen).
  public static func create(database: AtelierDatabase, name: String) throws -> (
    id: String, token: String
  ) {
    let token = generate()
    let id = Identifier.make()
    try database.insertToken(id: id, name: name, hash: TokenVerifier.hash(token))
    return (id, token)
  }
}

/// The first API token, created at first start; only its hash is stored.
public enum AdminToken {
  /// Creates the token when the database has none, file first: the file is written whole
  /// (0600, renamed into place) before the row that makes it valid, so a crash between the two
  /// leaves a file with no row (replaced at the next start), never a row nobody can read.
  /// Returns the token when created.
  public static func ensure(database: AtelierDatabase, path: String) throws -> String? {
    guard try database.tokenCount() == 0 else { return nil }
    let token = APITokens.generate()
    try writePrivately(token + "\n", to: path)
    try database.insertToken(id: Identifier.make(), name: "admin", hash: TokenVerifier.hash(token))
    return token
  }

  /// Writes `text` to a temporary file readable only by its owner, syncs it, renames it over
  /// `path`.
  static func writePrivately(_ text: String, to path: String) throws {
    let temporary = "\(path).tmp-\(Identifier.make(length: 6))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw AtelierError.internal(
        "cannot write the admin token",
        cause: AtelierError(.internal, "\(temporary): \(String(cString: strerror(errno)))"))
    }
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let synced = fsync(fd) == 0
    close(fd)
    guard written == bytes.count, synced, rename(temporary, path) == 0 else {
      unlink(temporary)
      throw AtelierError.internal("cannot write the admin token to \(path)")
    }
  }
}
