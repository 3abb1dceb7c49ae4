import ArgumentParser
import AtelierCore
import AtelierServer
import AtelierStore
import Foundation

/// API tokens, made and revoked on the manager's host straight in its database: only whoever
/// may read the data folder (root, or the user the manager runs as) can.
struct Token: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Create, list and revoke API tokens (on the manager's host, as its user).",
    subcommands: [Create.self, List.self, Revoke.self])

  static func database() throws -> AtelierDatabase {
    let config = try loadConfig()
    guard access(config.databasePath, R_OK | W_OK) == 0 else {
      throw CLIError(
        "cannot open \(config.databasePath): run this on the manager's host as root or as the "
          + "user the manager runs as (ATELIER_DATA_DIR names another data folder)")
    }
    return try AtelierDatabase(path: config.databasePath)
  }

  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a token; it is shown once.")
    @Option(help: "A name to recognise it by.") var name = "cli"

    func run() throws {
      guard (1...100).contains(name.count) else {
        throw CLIError("--name must be 1–100 characters")
      }
      let (id, token) = try APITokens.create(database: try Token.database(), name: name)
      print(token)
      FileHandle.standardError.write(Data("token \(id) (\(name)); shown only now\n".utf8))
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Tokens (never their values).")

    func run() throws {
      for token in try Token.database().tokens() {
        print("\(token.id)  \(ISO8601.format(token.createdAt))  \(token.name)")
      }
    }
  }

  struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Revoke a token (at once).")
    @Argument(help: "The token's id (from `atelier token list`).") var id: String

    func run() throws {
      guard try Token.database().deleteToken(id: id) else {
        throw CLIError("no token \(id)")
      }
      print("revoked \(id)")
    }
  }
}
