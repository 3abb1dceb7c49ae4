import Foundation
import GRDB
import Testing

@testable import AtelierStore

@Suite struct StoreTests {
  func database() throws -> AtelierDatabase {
    let dir = NSTemporaryDirectory() + "atelier-db-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return try AtelierDatabase(path: "\(dir)/atelier.db")
  }

  func record(_ id: String, _ status: String) -> SandboxRecord {
    SandboxRecord(
      id: id, status: status, image: "tiny", vcpus: 1, memoryMb: 256, hostname: "sbx-\(id)",
      createdAt: Date(), updatedAt: Date())
  }

  @Test func usesWriteAheadLogging() throws {
    #expect(try database().journalMode() == "wal")
  }

  @Test func limitIsEnforcedAtomically() async throws {
    let db = try database()
    let results = try await withThrowingTaskGroup(of: Bool.self) { group in
      for index in 0..<20 {
        group.addTask {
          try db.insert(
            self.record(String(format: "a%011d", index), "creating"),
            ifCountOf: ["creating", "running"],
            below: 5)
        }
      }
      return try await group.reduce(into: [Bool]()) { $0.append($1) }
    }
    #expect(results.filter { $0 }.count == 5)
    #expect(try db.count(statuses: ["creating"]) == 5)
    // Stopped sandboxes do not count.
    try db.insert(record("b00000000000", "stopped"))
    #expect(try db.count(statuses: ["creating", "running"]) == 5)
  }

  @Test func sandboxesRoundTripAndFilterByStatus() throws {
    let db = try database()
    try db.insert(record("c00000000001", "running"))
    try db.insert(record("c00000000002", "error"))
    #expect(try db.sandboxes().count == 2)
    #expect(try db.sandboxes(status: "error").map(\.id) == ["c00000000002"])
    var row = try #require(try db.sandbox(id: "c00000000001"))
    row.status = "stopped"
    try db.update(row)
    #expect(try db.sandbox(id: "c00000000001")?.status == "stopped")
    #expect(try db.deleteSandbox(id: "c00000000001"))
    #expect(try db.sandbox(id: "c00000000001") == nil)
  }

  /// The API tokens of earlier versions become the keys of a first admin, who owns what
  /// exists; a database without tokens gets no user (the first start makes the admin).
  @Test func tokensBecomeTheFirstAdminsKeys() throws {
    let dir = NSTemporaryDirectory() + "atelier-db-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = "\(dir)/atelier.db"
    do {
      let pool = try DatabasePool(path: path)
      try AtelierDatabase.migrator.migrate(pool, upTo: "v3-network-leases")
      try pool.write { db in
        try db.execute(
          sql: "INSERT INTO api_tokens (id, name, tokenHash, createdAt) VALUES (?, ?, ?, ?)",
          arguments: ["t00000000001", "admin", "abc", Date()])
        try db.execute(
          sql: """
            INSERT INTO sandboxes (id, status, image, vcpus, memoryMb, hostname, createdAt,
              updatedAt) VALUES ('c00000000001', 'running', 'tiny', 1, 256, 'h', ?, ?)
            """, arguments: [Date(), Date()])
      }
    }
    let database = try AtelierDatabase(path: path)
    let admin = try #require(try database.users().first)
    #expect(admin.role == .admin && admin.name == "admin")
    #expect(try database.apiKey(hash: "abc")?.userId == admin.id)
    #expect(try database.apiKey(hash: "abd") == nil)
    #expect(try database.sandbox(id: "c00000000001")?.ownerId == admin.id)
    #expect(try self.database().userCount() == 0)
  }
}

extension StoreTests {
  @Test func snapshotIdsAndCountsByKind() throws {
    let database = try database()
    for (id, kind) in [("snapuser0001", "user"), ("snapfork0001", "fork")] {
      try database.insert(
        SnapshotRecord(
          id: id, sandboxId: "sandbox00001", name: id, image: "tiny", vcpus: 1, memoryMb: 256,
          createdAt: Date(), sizeBytes: 1, kind: kind, state: "{}"))
    }
    #expect(Set(try database.snapshotIds()) == ["snapuser0001", "snapfork0001"])
    #expect(try database.countSnapshots(kind: "user") == 1)
    #expect(try database.countSnapshots(kind: "fork") == 1)
  }
}
