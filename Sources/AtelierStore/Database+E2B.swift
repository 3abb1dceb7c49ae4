import Foundation
import GRDB

/// What the E2B-compatible API keeps about a sandbox besides Atelier's own row: the template
/// it was asked for, its metadata and the token its envd adapter requires. Deleted with the
/// sandbox (foreign key, cascade).
public struct E2BSandboxRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "e2b_sandboxes"
  public var sandboxId: String
  /// The `templateID` as the client gave it (an image, a snapshot).
  public var templateId: String
  /// Client metadata: a JSON object of strings.
  public var metadata: String
  /// `envdAccessToken`: required (`X-Access-Token`) on every envd request to this sandbox.
  /// Kept in the clear, like the agent key: the API hands it out again on connect.
  public var accessToken: String
  /// Pause rather than delete at the end of the lifetime.
  public var autoPause: Bool

  public init(
    sandboxId: String, templateId: String, metadata: String, accessToken: String,
    autoPause: Bool
  ) {
    self.sandboxId = sandboxId
    self.templateId = templateId
    self.metadata = metadata
    self.accessToken = accessToken
    self.autoPause = autoPause
  }
}

extension AtelierDatabase {
  /// Added migrations (never changed once released): sandbox lifetimes and environments, and
  /// the E2B adapter's table.
  static func registerLifetimeAndE2BMigrations(_ migrator: inout DatabaseMigrator) {
    migrator.registerMigration("v5-lifetime-environment") { db in
      try db.alter(table: "sandboxes") { table in
        table.add(column: "expiresAt", .datetime)
        table.add(column: "expiryAction", .text)
        table.add(column: "environment", .text)
      }
    }
    migrator.registerMigration("v6-e2b") { db in
      try db.create(table: "e2b_sandboxes") { table in
        table.column("sandboxId", .text).primaryKey()
          .references("sandboxes", onDelete: .cascade)
        table.column("templateId", .text).notNull()
        table.column("metadata", .text).notNull()
        table.column("accessToken", .text).notNull()
        table.column("autoPause", .boolean).notNull()
      }
    }
  }

  // MARK: Lifetimes

  /// Sandboxes whose lifetime ended at or before `now`.
  public func expiredSandboxes(now: Date) throws -> [SandboxRecord] {
    try pool.read { db in
      try SandboxRecord.filter(Column("expiresAt") != nil && Column("expiresAt") <= now)
        .fetchAll(db)
    }
  }

  // MARK: E2B

  public func e2bSandbox(id: String) throws -> E2BSandboxRecord? {
    try pool.read { try E2BSandboxRecord.fetchOne($0, key: id) }
  }

  /// Inserts the record unless the sandbox already has one; returns the one stored.
  public func insertE2BSandboxIfMissing(_ record: E2BSandboxRecord) throws -> E2BSandboxRecord {
    try pool.write { db in
      if let existing = try E2BSandboxRecord.fetchOne(db, key: record.sandboxId) {
        return existing
      }
      try record.insert(db)
      return record
    }
  }

  public func save(_ record: E2BSandboxRecord) throws {
    try pool.write { try record.save($0) }
  }

  /// Every E2B record, by sandbox id.
  public func e2bSandboxes() throws -> [String: E2BSandboxRecord] {
    try pool.read { db in
      Dictionary(
        uniqueKeysWithValues: try E2BSandboxRecord.fetchAll(db).map { ($0.sandboxId, $0) })
    }
  }
}
