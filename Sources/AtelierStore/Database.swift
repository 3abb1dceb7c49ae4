import Foundation
import GRDB

/// A sandbox row: what should exist. `runtime` is the host drivers' state (VM handle, disk,
/// network) as JSON, owned by the manager.
public struct SandboxRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "sandboxes"

  public var id: String
  public var status: String
  public var image: String
  public var vcpus: Int
  public var memoryMb: Int
  public var hostname: String
  public var createdAt: Date
  public var updatedAt: Date
  public var timings: String?
  public var error: String?
  public var runtime: String?
  /// Idle time after which `onIdle` happens; nil never.
  public var timeoutSeconds: Int?
  public var onIdle: String?
  /// The snapshot this sandbox was restored from, if any.
  public var snapshotId: String?
  /// The end of its lifetime: at this instant `expiryAction` happens, however busy it is
  /// (unlike the idle policy); nil never.
  public var expiresAt: Date?
  /// `delete` (the default) or `pause`.
  public var expiryAction: String?
  /// The sandbox-wide environment (JSON object of strings) its agent gives every command,
  /// terminal and service.
  public var environment: String?
  /// The snapshot whose memory file this sandbox's running VM maps (a restore or a fork, until
  /// its VM stops): what keeps that file alive after the snapshot is deleted.
  public var memorySnapshotId: String?
  /// The user it belongs to (members see and act on their own only).
  public var ownerId: String?

  public init(
    id: String, status: String, image: String, vcpus: Int, memoryMb: Int, hostname: String,
    createdAt: Date, updatedAt: Date, timings: String? = nil, error: String? = nil,
    runtime: String? = nil, timeoutSeconds: Int? = nil, onIdle: String? = nil,
    snapshotId: String? = nil, expiresAt: Date? = nil, expiryAction: String? = nil,
    environment: String? = nil, memorySnapshotId: String? = nil, ownerId: String? = nil
  ) {
    self.id = id
    self.status = status
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.hostname = hostname
    self.createdAt = createdAt
    self.updatedAt = updatedAt
    self.timings = timings
    self.error = error
    self.runtime = runtime
    self.timeoutSeconds = timeoutSeconds
    self.onIdle = onIdle
    self.snapshotId = snapshotId
    self.expiresAt = expiresAt
    self.expiryAction = expiryAction
    self.environment = environment
    self.memorySnapshotId = memorySnapshotId
    self.ownerId = ownerId
  }
}

/// A memory + disk snapshot of a sandbox. `state` is the host drivers' part (disk, memory
/// file, kernel, machine shape) as JSON, owned by the manager.
public struct SnapshotRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
  public static let databaseTableName = "snapshots"
  public var id: String
  public var sandboxId: String
  public var name: String
  public var image: String
  public var vcpus: Int
  public var memoryMb: Int
  public var createdAt: Date
  public var sizeBytes: Int64
  /// `user` (made through the API) or `fork` (internal, retired once the forks exist).
  public var kind: String
  public var state: String
  /// Deleted (or, for a fork's, done with) while VMs still map its memory file: hidden from
  /// the API, its files kept until the last of them is gone.
  public var retiredAt: Date?
  /// The user it belongs to.
  public var ownerId: String?

  public init(
    id: String, sandboxId: String, name: String, image: String, vcpus: Int, memoryMb: Int,
    createdAt: Date, sizeBytes: Int64, kind: String, state: String, retiredAt: Date? = nil,
    ownerId: String? = nil
  ) {
    self.id = id
    self.sandboxId = sandboxId
    self.name = name
    self.image = image
    self.vcpus = vcpus
    self.memoryMb = memoryMb
    self.createdAt = createdAt
    self.sizeBytes = sizeBytes
    self.kind = kind
    self.state = state
    self.retiredAt = retiredAt
    self.ownerId = ownerId
  }
}

/// SQLite in WAL mode through GRDB, with versioned migrations.
public final class AtelierDatabase: Sendable {
  let pool: DatabasePool

  public init(path: String) throws {
    var configuration = Configuration()
    configuration.busyMode = .timeout(10)
    pool = try DatabasePool(path: path, configuration: configuration)
    try Self.migrator.migrate(pool)
  }

  static var migrator: DatabaseMigrator {
    var migrator = DatabaseMigrator()
    migrator.registerMigration("v1") { db in
      try db.create(table: "sandboxes") { table in
        table.column("id", .text).primaryKey()
        table.column("status", .text).notNull().indexed()
        table.column("image", .text).notNull()
        table.column("vcpus", .integer).notNull()
        table.column("memoryMb", .integer).notNull()
        table.column("hostname", .text).notNull()
        table.column("createdAt", .datetime).notNull()
        table.column("updatedAt", .datetime).notNull()
        table.column("timings", .text)
        table.column("error", .text)
        table.column("runtime", .text)
      }
      try db.create(table: "api_tokens") { table in
        table.column("id", .text).primaryKey()
        table.column("name", .text).notNull()
        table.column("tokenHash", .text).notNull().unique()
        table.column("createdAt", .datetime).notNull()
      }
    }
    migrator.registerMigration("v2-lifecycle") { db in
      try db.alter(table: "sandboxes") { table in
        table.add(column: "timeoutSeconds", .integer)
        table.add(column: "onIdle", .text)
        table.add(column: "snapshotId", .text)
      }
      try db.create(table: "snapshots") { table in
        table.column("id", .text).primaryKey()
        table.column("sandboxId", .text).notNull().indexed()
        table.column("name", .text).notNull()
        table.column("image", .text).notNull()
        table.column("vcpus", .integer).notNull()
        table.column("memoryMb", .integer).notNull()
        table.column("createdAt", .datetime).notNull()
        table.column("sizeBytes", .integer).notNull()
        table.column("kind", .text).notNull()
        table.column("state", .text).notNull()
      }
    }
    migrator.registerMigration("v3-network-leases") { db in
      try db.create(table: "network_leases") { table in
        table.column("sandboxId", .text).primaryKey()
        table.column("octet", .integer).notNull().unique()
      }
    }
    migrator.registerMigration("v4-memory-snapshots") { db in
      try db.alter(table: "sandboxes") { table in
        table.add(column: "memorySnapshotId", .text)
      }
      try db.create(
        index: "sandboxes_on_memorySnapshotId", on: "sandboxes", columns: ["memorySnapshotId"])
      try db.alter(table: "snapshots") { table in
        table.add(column: "retiredAt", .datetime)
      }
    }
    registerLifetimeAndE2BMigrations(&migrator)
    migrator.registerMigration("v5-access", migrate: AccessMigration.apply)
    return migrator
  }

  // MARK: Sandboxes

  public func insert(_ sandbox: SandboxRecord) throws {
    try pool.write { try sandbox.insert($0) }
  }

  /// Inserts only if fewer than `limit` rows have one of `statuses` (one transaction, so
  /// concurrent creates cannot both take the last place). Returns false when full.
  public func insert(_ sandbox: SandboxRecord, ifCountOf statuses: [String], below limit: Int)
    throws -> Bool
  {
    try pool.write { db in
      let count = try SandboxRecord.filter(statuses.contains(Column("status"))).fetchCount(db)
      guard count < limit else { return false }
      try sandbox.insert(db)
      return true
    }
  }

  public func update(_ sandbox: SandboxRecord) throws {
    try pool.write { try sandbox.update($0) }
  }

  public func sandbox(id: String) throws -> SandboxRecord? {
    try pool.read { try SandboxRecord.fetchOne($0, key: id) }
  }

  /// Sandboxes (of one status, or of one owner, when given), oldest first.
  public func sandboxes(status: String? = nil, ownerId: String? = nil) throws -> [SandboxRecord] {
    try pool.read { db in
      var request = SandboxRecord.order(Column("createdAt"))
      if let status { request = request.filter(Column("status") == status) }
      if let ownerId { request = request.filter(Column("ownerId") == ownerId) }
      return try request.fetchAll(db)
    }
  }

  public func count(statuses: [String]) throws -> Int {
    try pool.read { try SandboxRecord.filter(statuses.contains(Column("status"))).fetchCount($0) }
  }

  @discardableResult
  public func deleteSandbox(id: String) throws -> Bool {
    try pool.write { try SandboxRecord.deleteOne($0, key: id) }
  }

  // MARK: Snapshots

  public func insert(_ snapshot: SnapshotRecord) throws {
    try pool.write { try snapshot.insert($0) }
  }

  public func snapshot(id: String) throws -> SnapshotRecord? {
    try pool.read { try SnapshotRecord.fetchOne($0, key: id) }
  }

  /// The ids of all snapshots, retired ones included (without reading their state).
  public func snapshotIds(includingRetired: Bool = true) throws -> [String] {
    try pool.read {
      try String.fetchAll(
        $0,
        sql: includingRetired
          ? "SELECT id FROM snapshots" : "SELECT id FROM snapshots WHERE retiredAt IS NULL")
    }
  }

  public func countSnapshots(kind: String) throws -> Int {
    try pool.read {
      try SnapshotRecord.filter(Column("kind") == kind && Column("retiredAt") == nil)
        .fetchCount($0)
    }
  }

  /// Live (not retired) snapshots (of one kind, of one owner, when given).
  public func snapshots(kind: String? = nil, ownerId: String? = nil) throws -> [SnapshotRecord] {
    try pool.read { db in
      var request = SnapshotRecord.filter(Column("retiredAt") == nil).order(Column("createdAt"))
      if let kind { request = request.filter(Column("kind") == kind) }
      if let ownerId { request = request.filter(Column("ownerId") == ownerId) }
      return try request.fetchAll(db)
    }
  }

  /// Hides a snapshot whose memory file VMs still map; its row stays until they are gone.
  public func retireSnapshot(id: String, at date: Date = Date()) throws {
    try pool.write {
      try $0.execute(
        sql: "UPDATE snapshots SET retiredAt = ? WHERE id = ? AND retiredAt IS NULL",
        arguments: [date, id])
    }
  }

  /// Retired snapshots whose memory file no sandbox maps any more: the refcount of a
  /// snapshot's memory file is the number of sandboxes whose `memorySnapshotId` names it.
  public func unusedRetiredSnapshotIds() throws -> [String] {
    try pool.read {
      try String.fetchAll(
        $0,
        sql: """
          SELECT id FROM snapshots WHERE retiredAt IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM sandboxes WHERE memorySnapshotId = snapshots.id)
          """)
    }
  }

  /// How many sandboxes map the snapshot's memory file.
  public func memoryUsers(ofSnapshot id: String) throws -> Int {
    try pool.read {
      try SandboxRecord.filter(Column("memorySnapshotId") == id).fetchCount($0)
    }
  }

  @discardableResult
  public func deleteSnapshot(id: String) throws -> Bool {
    try pool.write { try SnapshotRecord.deleteOne($0, key: id) }
  }

  /// Sandbox counts by status.
  public func countsByStatus() throws -> [String: Int] {
    try pool.read { db in
      let rows = try Row.fetchAll(
        db, sql: "SELECT status, COUNT(*) AS n FROM sandboxes GROUP BY status")
      return Dictionary(uniqueKeysWithValues: rows.map { ($0["status"] as String, $0["n"] as Int) })
    }
  }

  // MARK: Address leases

  /// The sandbox's lease, or the lowest free host number in `range` (one transaction).
  public func leaseOctet(sandboxId: String, range: ClosedRange<Int>) throws -> Int? {
    try pool.write { db in
      if let existing = try Int.fetchOne(
        db, sql: "SELECT octet FROM network_leases WHERE sandboxId = ?", arguments: [sandboxId])
      {
        return existing
      }
      let taken = Set(try Int.fetchAll(db, sql: "SELECT octet FROM network_leases"))
      guard let free = range.first(where: { !taken.contains($0) }) else { return nil }
      try db.execute(
        sql: "INSERT INTO network_leases (sandboxId, octet) VALUES (?, ?)",
        arguments: [sandboxId, free])
      return free
    }
  }

  public func leasedSandboxIds() throws -> [String] {
    try pool.read { try String.fetchAll($0, sql: "SELECT sandboxId FROM network_leases") }
  }

  public func deleteLease(sandboxId: String) throws {
    try pool.write {
      try $0.execute(sql: "DELETE FROM network_leases WHERE sandboxId = ?", arguments: [sandboxId])
    }
  }

  /// The journal mode in effect (for the health check and tests).
  public func journalMode() throws -> String {
    try pool.read { try String.fetchOne($0, sql: "PRAGMA journal_mode") ?? "" }
  }
}
