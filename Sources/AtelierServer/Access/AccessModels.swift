import AtelierCore
import AtelierStore
import Foundation

/// A user as the API shows it.
struct UserInfo: Codable, Sendable, Equatable {
  var id: String
  var name: String
  var role: UserRole
  var createdAt: Date
  var githubLogin: String?

  init(_ record: UserRecord) {
    id = record.id
    name = record.name
    role = record.role
    createdAt = record.createdAt
    githubLogin = record.githubLogin
  }

  /// User names: what `atelier login`, SSH and URLs can carry.
  static let namePattern = "^[a-z][a-z0-9._-]{0,31}$"
  static func isValidName(_ name: String) -> Bool {
    name.wholeMatch(of: /[a-z][a-z0-9._-]{0,31}/) != nil
  }
}

struct CreateUserRequest: Codable, Sendable {
  var name: String
  var role: UserRole?
}

struct UpdateUserRequest: Codable, Sendable {
  var role: UserRole?
}

/// `POST /api/users`: the user and its first key, shown once.
struct CreatedUser: Codable, Sendable {
  var user: UserInfo
  var apiKey: String
}

/// An API key as the API shows it (never the key itself, but at creation).
struct APIKeyInfo: Codable, Sendable, Equatable {
  var id: String
  var name: String
  var createdAt: Date
  var expiresAt: Date?
  var lastUsedAt: Date?

  init(_ record: APIKeyRecord) {
    id = record.id
    name = record.name
    createdAt = record.createdAt
    expiresAt = record.expiresAt
    lastUsedAt = record.lastUsedAt
  }

  static let nameLength = 1...100
}

struct CreateAPIKeyRequest: Codable, Sendable {
  var name: String
  /// Seconds until it stops working (none: never). A lifetime, not a time: a schema can
  /// bound it, where "a time in the future" cannot be said.
  var expiresInSeconds: Int?
  /// A minute to ten years.
  static let lifetimeRange = 60...315_360_000
}

struct CreatedAPIKey: Codable, Sendable {
  var key: APIKeyInfo
  var apiKey: String
}

/// `GET /auth/me`.
struct Whoami: Codable, Sendable {
  var user: UserInfo
  /// `key` or `session`.
  var authenticatedBy: String
  /// For session callers: what writes must send in `X-CSRF-Token`.
  var csrfToken: String?
}

struct SessionRequest: Codable, Sendable {
  /// An API key to trade for a session cookie.
  var token: String
}

struct SessionStarted: Codable, Sendable {
  var user: UserInfo
  var csrfToken: String
  var expiresAt: Date
}

extension UserRole: SchemaEnumeration {}
extension UserInfo: SchemaDescribed {
  static var schemaName: String { "User" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("name", "pattern", .string(namePattern))
  }
}
extension CreateUserRequest: SchemaDescribed {
  static var schemaName: String { "CreateUser" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("name", "pattern", .string(UserInfo.namePattern))
    schema.describe("role", "member by default")
  }
}
extension UpdateUserRequest: SchemaDescribed { static var schemaName: String { "UpdateUser" } }
extension APIKeyInfo: SchemaDescribed {
  static var schemaName: String { "APIKey" }
}
extension CreateAPIKeyRequest: SchemaDescribed {
  static var schemaName: String { "CreateAPIKey" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.length("name", APIKeyInfo.nameLength)
    schema.bound("expiresInSeconds", CreateAPIKeyRequest.lifetimeRange)
    schema.describe("expiresInSeconds", "seconds until the key stops working; none: never")
  }
}
