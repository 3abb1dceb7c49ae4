import AtelierStore
import Foundation
import Testing

@testable import AtelierServer

/// API keys and the first admin, straight on the database (the routes are in `AccessTests`).
@Suite struct APIKeyTests {
  struct Store {
    let database: AtelierDatabase
    let folder: String
    let authenticator: Authenticator
  }

  func store() throws -> Store {
    let folder = NSTemporaryDirectory() + "atelier-keys-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let database = try AtelierDatabase(path: "\(folder)/atelier.db")
    let signer = try SessionSigner.load(path: "\(folder)/session-key")
    return Store(
      database: database, folder: folder,
      authenticator: Authenticator(database: database, signer: signer))
  }

  @Test func theAdminKeyFileIsWrittenBeforeItsRows() throws {
    let store = try store()
    defer { try? FileManager.default.removeItem(atPath: store.folder) }
    // Where the file cannot be written, no user or key is made (so no key nobody can read).
    let blocked = "\(store.folder)/no-such-folder/admin-token"
    #expect(throws: (any Error).self) {
      try AdminToken.ensure(database: store.database, path: blocked)
    }
    #expect(try store.database.userCount() == 0)
    #expect(try store.database.apiKeyCount() == 0)
    // The positive control: where it can, both exist, the file private, and the key is an
    // admin's.
    let path = "\(store.folder)/admin-token"
    let key = try #require(try AdminToken.ensure(database: store.database, path: path))
    #expect(try String(contentsOfFile: path, encoding: .utf8) == key + "\n")
    let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
    #expect(mode == 0o600)
    let principal = try #require(store.authenticator.principal(forKey: key))
    #expect(principal.isAdmin && principal.userName == "admin")
    #expect(try AdminToken.ensure(database: store.database, path: path) == nil)
  }

  @Test func keysAreStoredHashedAndRevokedAtOnce() throws {
    let store = try store()
    defer { try? FileManager.default.removeItem(atPath: store.folder) }
    _ = try AdminToken.ensure(database: store.database, path: "\(store.folder)/admin-token")
    let admin = try #require(try store.database.user(named: "admin"))
    let (id, key) = try APIKeys.create(database: store.database, userId: admin.id, name: "ci")
    #expect(store.authenticator.principal(forKey: key)?.credential == .apiKey(id: id))
    // Only the hash is stored: no column of the row holds the key.
    let record = try #require(try store.database.apiKeys(userId: admin.id).first { $0.id == id })
    #expect(record.keyHash == APIKeys.hash(key) && record.keyHash != key)
    // Nor any byte of the database files; the positive control: its hash is in them.
    let files = ["atelier.db", "atelier.db-wal"].map {
      FileManager.default.contents(atPath: "\(store.folder)/\($0)") ?? Data()
    }
    #expect(files.allSatisfy { $0.range(of: Data(key.utf8)) == nil })
    #expect(files.contains { $0.range(of: Data(record.keyHash.utf8)) != nil })
    #expect(try store.database.deleteAPIKey(id: id))
    #expect(store.authenticator.principal(forKey: key) == nil)
    #expect(store.authenticator.principal(forKey: "") == nil)
  }

  @Test func expiredKeysFailAndUseIsRecorded() throws {
    let store = try store()
    defer { try? FileManager.default.removeItem(atPath: store.folder) }
    _ = try AdminToken.ensure(database: store.database, path: "\(store.folder)/admin-token")
    let admin = try #require(try store.database.user(named: "admin"))
    let now = Date()
    let (_, expiring) = try APIKeys.create(
      database: store.database, userId: admin.id, name: "short",
      expiresAt: now.addingTimeInterval(60))
    // Valid until its expiry, not after.
    #expect(store.authenticator.principal(forKey: expiring, now: now) != nil)
    #expect(store.authenticator.principal(forKey: expiring, now: now.addingTimeInterval(61)) == nil)
    // The last-used time is written on use, at most once a minute.
    let (id, key) = try APIKeys.create(database: store.database, userId: admin.id, name: "used")
    func lastUsed() throws -> Date? {
      try store.database.apiKeys(userId: admin.id).first { $0.id == id }?.lastUsedAt
    }
    #expect(try lastUsed() == nil)
    _ = store.authenticator.principal(forKey: key, now: now)
    let first = try #require(try lastUsed())
    #expect(abs(first.timeIntervalSince(now)) < 1)
    _ = store.authenticator.principal(forKey: key, now: now.addingTimeInterval(10))
    #expect(try lastUsed() == first)
    _ = store.authenticator.principal(forKey: key, now: now.addingTimeInterval(120))
    #expect(try abs(#require(try lastUsed()).timeIntervalSince(now) - 120) < 1)
  }
}
