import Foundation
import GRDB

/// What a user may do: admins act on everything, members on what they own.
public enum UserRole: String, Codable, Sendable, CaseIterable {
  case admin, member
}

public struct UserRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "users"
  public var id: String
  public var name: String
  public var role: UserRole
  public var createdAt: Date
  /// Set for users who log in with GitHub.
  public var githubLogin: String?

  public init(
    id: String, name: String, role: UserRole, createdAt: Date, githubLogin: String? = nil
  ) {
    self.id = id
    self.name = name
    self.role = role
    self.createdAt = createdAt
    self.githubLogin = githubLogin
  }
}

/// An API key: only its SHA-256 is stored; the key itself is shown once, at creation.
public struct APIKeyRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "api_keys"
  public var id: String
  public var userId: String
  public var name: String
  public var keyHash: String
  public var createdAt: Date
  public var expiresAt: Date?
  public var lastUsedAt: Date?

  public init(
    id: String, userId: String, name: String, keyHash: String, createdAt: Date,
    expiresAt: Date? = nil, lastUsedAt: Date? = nil
  ) {
    self.id = id
    self.userId = userId
    self.name = name
    self.keyHash = keyHash
    self.createdAt = createdAt
    self.expiresAt = expiresAt
    self.lastUsedAt = lastUsedAt
  }
}

/// A browser session: its cookie is signed and carries its expiry; this row is what lets it be
/// revoked (a session whose row is gone is over).
public struct SessionRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "sessions"
  public var id: String
  public var userId: String
  public var createdAt: Date
  public var expiresAt: Date

  public init(id: String, userId: String, createdAt: Date, expiresAt: Date) {
    self.id = id
    self.userId = userId
    self.createdAt = createdAt
    self.expiresAt = expiresAt
  }
}

enum AccessMigration {
  /// Users, their API keys and sessions; owners for sandboxes and snapshots. The API tokens of
  /// earlier versions become the keys of a first admin, who owns everything that exists.
  static func apply(_ db: Database) throws {
    try db.create(table: "users") { table in
      table.column("id", .text).primaryKey()
      table.column("name", .text).notNull().unique()
      table.column("role", .text).notNull()
      table.column("createdAt", .datetime).notNull()
      table.column("githubLogin", .text).unique()
    }
    try db.create(table: "api_keys") { table in
      table.column("id", .text).primaryKey()
      table.column("userId", .text).notNull().indexed()
        .references("users", onDelete: .cascade)
      table.column("name", .text).notNull()
      table.column("keyHash", .text).notNull().unique()
      table.column("createdAt", .datetime).notNull()
      table.column("expiresAt", .datetime)
      table.column("lastUsedAt", .datetime)
    }
    try db.create(table: "sessions") { table in
      table.column("id", .text).primaryKey()
      table.column("userId", .text).notNull().indexed()
        .references("users", onDelete: .cascade)
      table.column("createdAt", .datetime).notNull()
      table.column("expiresAt", .datetime).notNull()
    }
    try db.alter(table: "sandboxes") { $0.add(column: "ownerId", .text).indexed() }
    try db.alter(table: "snapshots") { $0.add(column: "ownerId", .text).indexed() }
    let tokens = try Row.fetchAll(db, sql: "SELECT id, name, tokenHash, createdAt FROM api_tokens")
    if !tokens.isEmpty {
      // An id of the same form as every other (`Identifier`: a letter, then 11 of [a-z0-9]).
      let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
      let id = "u" + String((0..<11).map { _ in alphabet.randomElement()! })
      let admin = UserRecord(id: id, name: "admin", role: .admin, createdAt: Date())
      try admin.insert(db)
      for token in tokens {
        try APIKeyRecord(
          id: token["id"], userId: admin.id, name: token["name"], keyHash: token["tokenHash"],
          createdAt: token["createdAt"]
        ).insert(db)
      }
      try db.execute(sql: "UPDATE sandboxes SET ownerId = ?", arguments: [admin.id])
      try db.execute(sql: "UPDATE snapshots SET ownerId = ?", arguments: [admin.id])
    }
    try db.drop(table: "api_tokens")
  }
}
