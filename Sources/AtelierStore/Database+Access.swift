import Foundation
import GRDB

/// Users, API keys and sessions.
extension AtelierDatabase {
  public func userCount() throws -> Int {
    try pool.read { try UserRecord.fetchCount($0) }
  }

  public func users() throws -> [UserRecord] {
    try pool.read { try UserRecord.order(Column("createdAt")).fetchAll($0) }
  }

  public func user(id: String) throws -> UserRecord? {
    try pool.read { try UserRecord.fetchOne($0, key: id) }
  }

  public func user(named name: String) throws -> UserRecord? {
    try pool.read { try UserRecord.filter(Column("name") == name).fetchOne($0) }
  }

  public func user(githubLogin: String) throws -> UserRecord? {
    try pool.read { try UserRecord.filter(Column("githubLogin") == githubLogin).fetchOne($0) }
  }

  /// Inserts a user and its first key in one transaction; false when the name is taken.
  public func insert(_ user: UserRecord, firstKey: APIKeyRecord?) throws -> Bool {
    try pool.write { db in
      guard try UserRecord.filter(Column("name") == user.name).fetchCount(db) == 0 else {
        return false
      }
      try user.insert(db)
      try firstKey?.insert(db)
      return true
    }
  }

  public func update(_ user: UserRecord) throws {
    try pool.write { try user.update($0) }
  }

  /// What a user owns (sandboxes, snapshots), which keeps it from being deleted.
  public func ownedCount(userId: String) throws -> Int {
    try pool.read { db in
      try SandboxRecord.filter(Column("ownerId") == userId).fetchCount(db)
        + SnapshotRecord.filter(Column("ownerId") == userId).fetchCount(db)
    }
  }

  /// Deletes the user with its keys and sessions.
  @discardableResult
  public func deleteUser(id: String) throws -> Bool {
    try pool.write { db in
      try APIKeyRecord.filter(Column("userId") == id).deleteAll(db)
      try SessionRecord.filter(Column("userId") == id).deleteAll(db)
      return try UserRecord.deleteOne(db, key: id)
    }
  }

  // MARK: API keys

  public func insert(_ key: APIKeyRecord) throws {
    try pool.write { try key.insert($0) }
  }

  public func apiKey(hash: String) throws -> APIKeyRecord? {
    try pool.read { try APIKeyRecord.filter(Column("keyHash") == hash).fetchOne($0) }
  }

  public func apiKeys(userId: String? = nil) throws -> [APIKeyRecord] {
    try pool.read { db in
      var request = APIKeyRecord.order(Column("createdAt"))
      if let userId { request = request.filter(Column("userId") == userId) }
      return try request.fetchAll(db)
    }
  }

  public func apiKeyCount() throws -> Int {
    try pool.read { try APIKeyRecord.fetchCount($0) }
  }

  /// Deletes a key (of `userId` only, when given).
  @discardableResult
  public func deleteAPIKey(id: String, userId: String? = nil) throws -> Bool {
    try pool.write { db in
      var request = APIKeyRecord.filter(Column("id") == id)
      if let userId { request = request.filter(Column("userId") == userId) }
      return try request.deleteAll(db) > 0
    }
  }

  public func touchAPIKey(id: String, at date: Date) throws {
    try pool.write {
      try $0.execute(
        sql: "UPDATE api_keys SET lastUsedAt = ? WHERE id = ?", arguments: [date, id])
    }
  }

  // MARK: Sessions

  public func insert(_ session: SessionRecord) throws {
    try pool.write { try session.insert($0) }
  }

  public func session(id: String) throws -> SessionRecord? {
    try pool.read { try SessionRecord.fetchOne($0, key: id) }
  }

  @discardableResult
  public func deleteSession(id: String) throws -> Bool {
    try pool.write { try SessionRecord.deleteOne($0, key: id) }
  }

  /// Removes sessions past their expiry.
  public func deleteExpiredSessions(before date: Date) throws {
    _ = try pool.write { try SessionRecord.filter(Column("expiresAt") < date).deleteAll($0) }
  }
}
