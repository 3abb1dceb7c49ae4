import ArgumentParser
import AtelierCore
import Foundation

/// A user as the API shows it (`GET /api/users`, `GET /auth/me`).
struct UserView: Codable {
  var id: String
  var name: String
  var role: String
  var createdAt: Date
  var githubLogin: String?
}

/// An API key as the API lists it (never the key itself).
struct KeyView: Codable {
  var id: String
  var name: String
  var createdAt: Date
  var expiresAt: Date?
  var lastUsedAt: Date?
}

/// `atelier login URL`: checks a key with the manager and stores it for later commands.
struct Login: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Store an API key for a manager (in ~/.config/atelier/credentials, 0600).",
    discussion: """
      The key is read from standard input (without echo on a terminal), or from ATELIER_TOKEN. \
      Later commands use it for that URL unless ATELIER_URL or ATELIER_TOKEN say otherwise.
      """)
  @Argument(help: "The manager's URL, e.g. https://atelier.example.com.") var url: String

  struct Me: Codable {
    var user: UserView
  }

  func run() async throws {
    guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
      throw CLIError("the URL must start with http:// or https://")
    }
    let base = Credentials.normalized(url)
    var key = ProcessInfo.processInfo.environment["ATELIER_TOKEN"] ?? ""
    if key.isEmpty { key = Self.readKey() }
    guard !key.isEmpty else { throw CLIError("no key given") }
    let client = ManagerClient(baseURL: base, token: key)
    let me = try await client.get("/auth/me", as: Me.self)
    try Credentials(url: base, key: key).save()
    print("logged in to \(base) as \(me.user.name) (\(me.user.role)); key in \(Credentials.path)")
  }

  /// One line from standard input, not echoed when it is a terminal.
  static func readKey() -> String {
    if isatty(STDIN_FILENO) == 1, let line = getpass("API key: ") {
      return String(cString: line).trimmingCharacters(in: .whitespaces)
    }
    return (readLine() ?? "").trimmingCharacters(in: .whitespaces)
  }
}

struct Logout: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Forget the stored key (revoke it with `atelier keys revoke` first if needed).")

  func run() throws {
    print(Credentials.remove() ? "logged out (\(Credentials.path) removed)" : "not logged in")
  }
}

struct Users: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "List, create and delete users (admins only).",
    subcommands: [List.self, Create.self, Delete.self])

  struct Created: Codable {
    var user: UserView
    var apiKey: String
  }

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Every user.")
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let users = try await ManagerClient.make(config: try loadConfig())
        .get("/api/users", as: [UserView].self)
      if json { return try printJSON(users) }
      printTable(
        ["ID", "NAME", "ROLE", "GITHUB", "CREATED"],
        users.map {
          [$0.id, $0.name, $0.role, $0.githubLogin ?? "", ISO8601.format($0.createdAt)]
        })
    }
  }

  struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Make a user; its first API key is printed, once.")
    @Argument(help: "Its name (a-z, 0-9, . _ -; starting with a letter).") var name: String
    @Flag(help: "Make it an admin (default: a member).") var admin = false

    func run() async throws {
      let created = try await ManagerClient.make(config: try loadConfig()).post(
        "/api/users", ["name": name, "role": admin ? "admin" : "member"], as: Created.self)
      print(created.apiKey)
      FileHandle.writeError(
        "user \(created.user.id) (\(created.user.name), \(created.user.role)); its key is shown only now"
      )
    }
  }

  struct Delete: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "delete", abstract: "Delete a user and its keys.")
    @Argument(help: "The user's id or name.") var user: String

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let users = try await client.get("/api/users", as: [UserView].self)
      guard let target = users.first(where: { $0.id == user || $0.name == user }) else {
        throw CLIError("no user \(user)")
      }
      _ = try await client.send(.DELETE, "/api/users/\(target.id)")
      print("deleted \(target.name)")
    }
  }
}

struct Keys: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Your API keys: list, create, revoke.",
    subcommands: [List.self, Create.self, Revoke.self])

  struct Created: Codable {
    var key: KeyView
    var apiKey: String
  }

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Your keys (never the keys).")
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let keys = try await ManagerClient.make(config: try loadConfig())
        .get("/api/api-keys", as: [KeyView].self)
      if json { return try printJSON(keys) }
      printTable(
        ["ID", "NAME", "CREATED", "EXPIRES", "LAST USED"],
        keys.map {
          [
            $0.id, $0.name, ISO8601.format($0.createdAt),
            $0.expiresAt.map(ISO8601.format) ?? "never", $0.lastUsedAt.map(ISO8601.format) ?? "",
          ]
        })
    }
  }

  struct Create: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Make a key; it is shown once.")
    @Option(help: "A name to recognise it by.") var name = "cli"
    @Option(help: "Days until it stops working (default: never).") var expiresInDays: Int?

    struct Body: Encodable {
      var name: String
      var expiresInSeconds: Int?
    }

    func run() async throws {
      if let days = expiresInDays, !(1...3650).contains(days) {
        throw CLIError("--expires-in-days must be 1–3650")
      }
      let created = try await ManagerClient.make(config: try loadConfig()).post(
        "/api/api-keys", Body(name: name, expiresInSeconds: expiresInDays.map { $0 * 86400 }),
        as: Created.self)
      print(created.apiKey)
      FileHandle.writeError("key \(created.key.id) (\(created.key.name)); shown only now")
    }
  }

  struct Revoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Revoke one of your keys (at once).")
    @Argument(help: "The key's id (from `atelier keys list`).") var id: String

    func run() async throws {
      _ = try await ManagerClient.make(config: try loadConfig()).send(
        .DELETE, "/api/api-keys/\(id)")
      print("revoked \(id)")
    }
  }
}
