import ArgumentParser
import AtelierCore
import AtelierServer
import AtelierStore
import Foundation

/// API keys made and revoked on the manager's host straight in its database (no running
/// manager or key needed): only whoever may read the data folder (root, or the user the manager
/// runs as) can. New keys belong to the first admin unless `--user` names another user; the
/// API's own `atelier keys` works from anywhere with a key.
struct Token: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Create, list and revoke API keys on the manager's host (as its user).",
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
    static let configuration = CommandConfiguration(abstract: "Make a key; it is shown once.")
    @Option(help: "A name to recognise it by.") var name = "cli"
    @Option(help: "The user it belongs to (default: the first admin).") var user: String?

    func run() throws {
      guard (1...100).contains(name.count) else {
        throw CLIError("--name must be 1–100 characters")
      }
      let database = try Token.database()
      let owner: UserRecord?
      if let user {
        owner = try database.user(named: user)
      } else {
        owner = try database.users().first { $0.role == .admin }
      }
      guard let owner else {
        throw CLIError(user.map { "no user \($0)" } ?? "no admin yet: start the manager once")
      }
      let (id, key) = try APIKeys.create(database: database, userId: owner.id, name: name)
      print(key)
      FileHandle.writeError("key \(id) (\(name)) of \(owner.name); shown only now")
    }
  }

  struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Every user's keys (not the keys).")

    func run() throws {
      let database = try Token.database()
      let names = Dictionary(
        uniqueKeysWithValues: try database.users().map { ($0.id, $0.name) })
      for key in try database.apiKeys() {
        print(
          "\(key.id)  \(ISO8601.format(key.createdAt))  \(names[key.userId] ?? "?")  \(key.name)")
      }
    }
  }

  struct Revoke: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Revoke a key (at once).")
    @Argument(help: "The key's id (from `atelier token list`).") var id: String

    func run() throws {
      guard try Token.database().deleteAPIKey(id: id) else {
        throw CLIError("no token \(id)")
      }
      print("revoked \(id)")
    }
  }
}
