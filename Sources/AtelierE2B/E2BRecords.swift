import AtelierCore
import AtelierStore
import Crypto
import Foundation

/// The E2B adapter's part of a sandbox (template, metadata, access token), kept in its own
/// table; a sandbox made through Atelier's own API gets one the first time E2B shows it.
struct E2BRecords: Sendable {
  let database: AtelierDatabase

  func record(_ sandboxId: String) throws -> E2BSandboxRecord? {
    try database.e2bSandbox(id: sandboxId)
  }

  func all() throws -> [String: E2BSandboxRecord] {
    try database.e2bSandboxes()
  }

  /// The record of `sandbox`, made (with a fresh token) when it has none.
  func ensure(_ sandbox: SandboxInfo, templateId: String? = nil) throws -> E2BSandboxRecord {
    try database.insertE2BSandboxIfMissing(
      E2BSandboxRecord(
        sandboxId: sandbox.id, templateId: templateId ?? sandbox.snapshotId ?? sandbox.image,
        metadata: "{}", accessToken: Self.newToken(), autoPause: sandbox.onExpiry == .pause))
  }

  func save(_ record: E2BSandboxRecord) throws {
    try database.save(record)
  }

  /// 32 random bytes, hex.
  static func newToken() -> String {
    var generator = SystemRandomNumberGenerator()
    return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator))
    }
    .joined()
  }

  static func metadata(_ record: E2BSandboxRecord?) -> [String: String] {
    guard let record else { return [:] }
    return (try? JSONDecoder().decode([String: String].self, from: Data(record.metadata.utf8)))
      ?? [:]
  }

  static func encode(_ metadata: [String: String]) -> String {
    String(decoding: (try? JSONEncoder().encode(metadata)) ?? Data("{}".utf8), as: UTF8.self)
  }
}

/// Secrets compared without telling, by the time taken, how much of them matched: both sides
/// are hashed first (equal lengths), then every byte is compared.
enum ConstantTime {
  static func equal(_ presented: String, _ expected: String) -> Bool {
    let left = SHA256.hash(data: Data(presented.utf8))
    let right = SHA256.hash(data: Data(expected.utf8))
    var difference: UInt8 = 0
    for (a, b) in zip(left, right) { difference |= a ^ b }
    return difference == 0 && !expected.isEmpty
  }
}
