/// GitHub as an optional login provider (OAuth with PKCE): on when a client id and secret are
/// set. Who may log in is an explicit list of users and/or organizations; the endpoints are
/// settings so that a test (or GitHub Enterprise) can name others.
public struct GitHubLoginSettings: Sendable, Equatable {
  public var clientId = ""
  public var clientSecret = ""
  /// GitHub logins allowed in (compared without case).
  public var allowedUsers: [String] = []
  /// Members of these organizations are allowed in.
  public var allowedOrgs: [String] = []
  public var authorizeURL = "https://github.com/login/oauth/authorize"
  public var tokenURL = "https://github.com/login/oauth/access_token"
  public var apiURL = "https://api.github.com"
  /// Where GitHub sends the browser back; empty: `<manager URL>/auth/github/callback`.
  public var redirectURL = ""

  public init() {}

  public var isEnabled: Bool { !clientId.isEmpty && !clientSecret.isEmpty }

  static func list(_ value: String) -> [String] {
    value.split(whereSeparator: { $0 == "," || $0 == " " }).map { $0.lowercased() }
  }

  static func url(_ value: String) throws -> String {
    guard value.hasPrefix("https://") || value.hasPrefix("http://") else {
      throw ConfigProblem("expected an http(s) URL")
    }
    return value.hasSuffix("/") ? String(value.dropLast()) : value
  }

  static let keys: [Config.Key] = [
    Config.Key(path: "github.clientId") { $0.github.clientId = $1 },
    Config.Key(path: "github.clientSecret") { $0.github.clientSecret = $1 },
    Config.Key(path: "github.allowedUsers") { $0.github.allowedUsers = list($1) },
    Config.Key(path: "github.allowedOrgs") { $0.github.allowedOrgs = list($1) },
    Config.Key(path: "github.authorizeUrl") { $0.github.authorizeURL = try url($1) },
    Config.Key(path: "github.tokenUrl") { $0.github.tokenURL = try url($1) },
    Config.Key(path: "github.apiUrl") { $0.github.apiURL = try url($1) },
    Config.Key(path: "github.redirectUrl") { $0.github.redirectURL = try url($1) },
  ]
}
