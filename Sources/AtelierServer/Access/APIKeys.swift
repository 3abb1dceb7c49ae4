import AtelierCore
import AtelierStore
import Crypto
import Foundation

/// API keys: made here, shown once, stored as hashes, each belonging to a user.
public enum APIKeys {
  /// A new random key (`atl_` and 48 hex digits: 192 bits).
  static func generate() -> String {
    var generator = SystemRandomNumberGenerator()
    let bytes = (0..<24).map { _ in UInt8.random(in: 0...255, using: &generator) }
    return "atl_" + bytes.map { String(format: "%02x", $0) }.joined()
  }

  static func hash(_ key: String) -> String {
    SHA256.hash(data: Data(key.utf8)).map { String(format: "%02x", $0) }.joined()
  }

  /// A key record for `userId` and the key itself (the only time it is seen).
  static func make(userId: String, name: String, expiresAt: Date? = nil) -> (
    APIKeyRecord, String
  ) {
    let key = generate()
    let record = APIKeyRecord(
      id: Identifier.make(), userId: userId, name: name, keyHash: hash(key), createdAt: Date(),
      expiresAt: expiresAt)
    return (record, key)
  }

  /// Stores a new key of `userId` and returns it with its id.
  public static func create(
    database: AtelierDatabase, userId: String, name: String, expiresAt: Date? = nil
  ) throws -> (id: String, key: String) {
    let (record, key) = make(userId: userId, name: name, expiresAt: expiresAt)
    try database.insert(record)
    return (record.id, key)
  }
}

/// The first user, an admin, and its first key, created at first start; the key goes to a file
/// only the manager's user can read.
public enum AdminToken {
  /// Creates them when the database has no user, file first: the file is written whole (0600,
  /// synced, renamed into place) before the rows that make its key valid, so a crash between
  /// the two leaves a file with no key (replaced at the next start), never a key nobody can
  /// read. Returns the key when created.
  public static func ensure(database: AtelierDatabase, path: String) throws -> String? {
    guard try database.userCount() == 0 else { return nil }
    let user = UserRecord(id: Identifier.make(), name: "admin", role: .admin, createdAt: Date())
    let (record, key) = APIKeys.make(userId: user.id, name: "admin")
    try writePrivately(key + "\n", to: path)
    guard try database.insert(user, firstKey: record) else {
      throw AtelierError.internal("cannot create the first admin: the name admin is taken")
    }
    return key
  }

  /// Writes `text` to a temporary file readable only by its owner, syncs it, renames it over
  /// `path`.
  static func writePrivately(_ text: String, to path: String) throws {
    let temporary = "\(path).tmp-\(Identifier.make(length: 6))"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw AtelierError.internal(
        "cannot write the admin key",
        cause: AtelierError(.internal, "\(temporary): \(String(cString: strerror(errno)))"))
    }
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let synced = fsync(fd) == 0
    close(fd)
    guard written == bytes.count, synced, rename(temporary, path) == 0 else {
      unlink(temporary)
      throw AtelierError.internal("cannot write the admin key to \(path)")
    }
  }
}
