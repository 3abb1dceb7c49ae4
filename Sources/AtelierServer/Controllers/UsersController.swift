import AtelierCore
import AtelierStore
import Foundation
import Hummingbird

/// Users (admins only) and each caller's own API keys.
struct UsersController {
  let database: AtelierDatabase

  /// `/api/users`, behind `AdminOnlyMiddleware`.
  func addAdminRoutes(to routes: DocumentedRoutes) {
    let database = self.database
    routes.json(.get, "users", OperationDoc("List users", tag: "users")) { _, _ in
      try database.users().map(UserInfo.init)
    }
    routes.json(
      .post, "users",
      OperationDoc(
        "Create a user with a first API key (shown once)", tag: "users",
        errors: [.conflict], produces: ["userId": "$response.body#/user/id"]),
      body: CreateUserRequest.self, status: .created, description: "the user and its key"
    ) { body, _, _ in
      guard UserInfo.isValidName(body.name) else {
        throw AtelierError.validation("name must match \(UserInfo.namePattern)")
      }
      let user = UserRecord(
        id: Identifier.make(), name: body.name, role: body.role ?? .member, createdAt: Date())
      let (key, secret) = APIKeys.make(userId: user.id, name: "first key")
      guard try database.insert(user, firstKey: key) else {
        throw AtelierError.conflict("a user named \(body.name) exists")
      }
      return CreatedUser(user: UserInfo(user), apiKey: secret)
    }
    routes.json(
      .patch, "users/{userId}",
      OperationDoc("Change a user's role", tag: "users", errors: [.notFound, .conflict]),
      body: UpdateUserRequest.self
    ) { body, _, context in
      var user = try Self.user(try context.parameters.require("userId"), in: database)
      if let role = body.role, role != user.role {
        if user.role == .admin { try Self.requireAnotherAdmin(than: user, in: database) }
        user.role = role
        try database.update(user)
      }
      return UserInfo(user)
    }
    routes.noContent(
      .delete, "users/{userId}",
      OperationDoc(
        "Delete a user and its keys (not while it owns sandboxes or snapshots)", tag: "users",
        errors: [.notFound, .conflict])
    ) { _, context in
      let user = try Self.user(try context.parameters.require("userId"), in: database)
      guard user.id != (try context.caller()).userId else {
        throw AtelierError.conflict("you cannot delete yourself")
      }
      if user.role == .admin { try Self.requireAnotherAdmin(than: user, in: database) }
      let owned = try database.ownedCount(userId: user.id)
      guard owned == 0 else {
        throw AtelierError.conflict(
          "\(user.name) owns \(owned) sandboxes or snapshots; delete them first")
      }
      try database.deleteUser(id: user.id)
    }
  }

  /// `/api/api-keys`: every caller's own.
  func addRoutes(to routes: DocumentedRoutes) {
    let database = self.database
    routes.json(.get, "api-keys", OperationDoc("Your API keys", tag: "users")) { _, context in
      try database.apiKeys(userId: try context.caller().userId).map(APIKeyInfo.init)
    }
    routes.json(
      .post, "api-keys",
      OperationDoc(
        "Make yourself an API key (shown once)", tag: "users",
        produces: ["keyId": "$response.body#/key/id"]),
      body: CreateAPIKeyRequest.self, status: .created, description: "the key"
    ) { body, _, context in
      guard APIKeyInfo.nameLength.contains(body.name.count) else {
        throw AtelierError.validation("name must be 1–100 characters")
      }
      if let seconds = body.expiresInSeconds,
        !CreateAPIKeyRequest.lifetimeRange.contains(seconds)
      {
        throw AtelierError.validation(
          "expiresInSeconds must be \(CreateAPIKeyRequest.lifetimeRange.lowerBound)–"
            + "\(CreateAPIKeyRequest.lifetimeRange.upperBound)")
      }
      let (record, secret) = APIKeys.make(
        userId: try context.caller().userId, name: body.name,
        expiresAt: body.expiresInSeconds.map { Date().addingTimeInterval(Double($0)) })
      try database.insert(record)
      return CreatedAPIKey(key: APIKeyInfo(record), apiKey: secret)
    }
    routes.noContent(
      .delete, "api-keys/{keyId}",
      OperationDoc("Revoke one of your keys (at once)", tag: "users", errors: [.notFound])
    ) { _, context in
      let id = try context.parameters.require("keyId")
      guard try database.deleteAPIKey(id: id, userId: try context.caller().userId) else {
        throw AtelierError.notFound("no key \(id) of yours")
      }
    }
  }

  static func user(_ id: String, in database: AtelierDatabase) throws -> UserRecord {
    guard let user = try database.user(id: id) else {
      throw AtelierError.notFound("user \(id) not found")
    }
    return user
  }

  /// There must always be an admin.
  static func requireAnotherAdmin(than user: UserRecord, in database: AtelierDatabase) throws {
    guard try database.users().contains(where: { $0.role == .admin && $0.id != user.id }) else {
      throw AtelierError.conflict("\(user.name) is the last admin")
    }
  }
}
