import AtelierStore
import Foundation
import Testing

@testable import AtelierServer

@Suite struct TokenTests {
  func database() throws -> (AtelierDatabase, String) {
    let folder = NSTemporaryDirectory() + "atelier-tokens-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    return (try AtelierDatabase(path: "\(folder)/atelier.db"), folder)
  }

  @Test func theAdminTokenFileIsWrittenBeforeItsRow() throws {
    let (database, folder) = try database()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    // Where the file cannot be written, no row is made (so no token nobody can read).
    let blocked = "\(folder)/no-such-folder/admin-token"
    #expect(throws: (any Error).self) { try AdminToken.ensure(database: database, path: blocked) }
    #expect(try database.tokenCount() == 0)
    // The positive control: where it can, both exist, the file private, and it verifies.
    let path = "\(folder)/admin-token"
    let token = try #require(try AdminToken.ensure(database: database, path: path))
    let written = try String(contentsOfFile: path, encoding: .utf8)
    #expect(written == token + "\n")
    let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
    #expect(mode == 0o600)
    #expect(TokenVerifier(database: database).principal(for: token) != nil)
    #expect(try AdminToken.ensure(database: database, path: path) == nil)
  }

  @Test func revokedTokensStopWorkingAtOnce() throws {
    let (database, folder) = try database()
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let verifier = TokenVerifier(database: database)
    let (id, token) = try APITokens.create(database: database, name: "ci")
    #expect(verifier.principal(for: token)?.name == "ci")
    #expect(try database.tokens().map(\.id) == [id])
    #expect(try database.deleteToken(id: id))
    #expect(verifier.principal(for: token) == nil)
    #expect(verifier.principal(for: "") == nil)
  }
}
