import AtelierCore
import AtelierStore
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

@testable import AtelierManager
@testable import AtelierServer

/// Users, keys, ownership and sessions through the routes, over fake drivers. Every refusal has
/// its positive control: the same request with the right credential succeeds.
@Suite struct AccessTests {
  typealias Harness = AccessHarness

  @Test func aMemberCannotReachAnAdminsSandbox() async throws {
    try await Harness.withRouter { setup, client in
      let admins = try await setup.createSandbox(setup.adminKey, client)
      let members = try await setup.createSandbox(setup.memberKey, client)
      let member = Harness.bearer(setup.memberKey, json: true)
      let admin = Harness.bearer(setup.adminKey, json: true)
      // The list: the member's own only; the admin's: both.
      let memberList = try await client.execute(
        uri: "/api/sandboxes", method: .get, headers: member)
      #expect(
        try JSONValue.parse(memberList.body).arrayValue?.map { $0["id"] } == [.string(members)])
      let adminList = try await client.execute(uri: "/api/sandboxes", method: .get, headers: admin)
      #expect(
        Set(
          try JSONValue.parse(adminList.body).arrayValue?.compactMap { $0["id"]?.stringValue } ?? []
        )
          == [admins, members])
      // Get, exec, an agent route, a lifecycle operation, a snapshot, delete: 404 for what the
      // member may not see; the same on its own sandbox succeeds, and the admin may on both.
      let requests: [(HTTPRequest.Method, String, String?, HTTPResponse.Status)] = [
        (.get, "", nil, .ok), (.post, "/exec", #"{"command": "true"}"#, .ok),
        (.get, "/services", nil, .ok), (.patch, "", #"{"timeoutSeconds": 600}"#, .ok),
        (.post, "/snapshots", #"{"name": "s"}"#, .created),
      ]
      for (method, suffix, body, success) in requests {
        let buffer = body.map { ByteBuffer(string: $0) }
        let refused = try await client.execute(
          uri: "/api/sandboxes/\(admins)\(suffix)", method: method, headers: member, body: buffer)
        #expect(refused.status == .notFound, "\(method) \(suffix)")
        #expect(String(buffer: refused.body).contains("NOT_FOUND"))
        for (key, id) in [(member, members), (admin, members), (admin, admins)] {
          let allowed = try await client.execute(
            uri: "/api/sandboxes/\(id)\(suffix)", method: method, headers: key, body: buffer)
          #expect(allowed.status == success, "\(method) \(suffix): \(allowed.status)")
        }
      }
      // The member's snapshot list holds its own only; the admin's snapshot is a 404 to it.
      let snapshots = try await client.execute(uri: "/api/snapshots", method: .get, headers: member)
      let ownSnapshots = try JSONValue.parse(snapshots.body).arrayValue ?? []
      #expect(
        ownSnapshots.count == 2 && ownSnapshots.allSatisfy { $0["sandboxId"] == .string(members) })
      let adminSnapshots = try await client.execute(
        uri: "/api/snapshots", method: .get, headers: admin)
      let others = try JSONValue.parse(adminSnapshots.body).arrayValue?.filter {
        $0["sandboxId"] == .string(admins)
      }
      let snapshotId = try #require(others?.first?["id"]?.stringValue)
      try await client.execute(uri: "/api/snapshots/\(snapshotId)", method: .get, headers: member) {
        #expect($0.status == .notFound)
      }
      try await client.execute(
        uri: "/api/sandboxes", method: .post, headers: member,
        body: ByteBuffer(string: #"{"snapshot": "\#(snapshotId)"}"#)
      ) { #expect($0.status == .notFound, "a restore from another's snapshot") }
      try await client.execute(uri: "/api/snapshots/\(snapshotId)", method: .get, headers: admin) {
        #expect($0.status == .ok)
      }
      // Delete: refused to the member, then its own and (by the admin) the admin's go.
      try await client.execute(uri: "/api/sandboxes/\(admins)", method: .delete, headers: member) {
        #expect($0.status == .notFound)
      }
      try await client.execute(uri: "/api/sandboxes/\(members)", method: .delete, headers: member) {
        #expect($0.status == .noContent)
      }
      try await client.execute(uri: "/api/sandboxes/\(admins)", method: .delete, headers: admin) {
        #expect($0.status == .noContent)
      }
    }
  }

  /// In this model a member sees only what it owns, so "visible but not changeable" is the
  /// admin-only routes: users and the cleanup. Those answer 403 to members.
  @Test func adminRoutesAre403ToMembers() async throws {
    try await Harness.withRouter { setup, client in
      let cases: [(HTTPRequest.Method, String, String?)] = [
        (.get, "/api/users", nil), (.post, "/api/users", #"{"name": "eve"}"#),
        (.post, "/api/system/cleanup", nil),
        // Last: the admin's request makes the member an admin.
        (.patch, "/api/users/\(setup.memberId)", #"{"role": "admin"}"#),
      ]
      for (method, path, body) in cases {
        let buffer = body.map { ByteBuffer(string: $0) }
        try await client.execute(
          uri: path, method: method, headers: Harness.bearer(setup.memberKey, json: true),
          body: buffer
        ) {
          #expect($0.status == .forbidden, "\(method) \(path)")
          #expect(String(buffer: $0.body).contains("FORBIDDEN"))
        }
        try await client.execute(
          uri: path, method: method, headers: Harness.bearer(setup.adminKey, json: true),
          body: buffer
        ) { #expect((200..<300).contains($0.status.code), "\(method) \(path): \($0.status)") }
      }
      // The member is an admin now (the PATCH above), so the same request passes.
      try await client.execute(
        uri: "/api/users", method: .get, headers: Harness.bearer(setup.memberKey)
      ) { #expect($0.status == .ok) }
    }
  }

  @Test func createdUsersGetAKeyShownOnce() async throws {
    try await Harness.withRouter { setup, client in
      let response = try await client.execute(
        uri: "/api/users", method: .post, headers: Harness.bearer(setup.adminKey, json: true),
        body: ByteBuffer(string: #"{"name": "noor", "role": "member"}"#))
      #expect(response.status == .created)
      let created = try JSONValue.parse(response.body)
      #expect(created["user"]?["name"] == "noor" && created["user"]?["role"] == "member")
      let key = try #require(created["apiKey"]?.stringValue)
      let me = try await client.execute(uri: "/auth/me", method: .get, headers: Harness.bearer(key))
      #expect(me.status == .ok)
      #expect(try JSONValue.parse(me.body)["user"]?["name"] == "noor")
      // Its keys are listed without the key; a new one is shown once, then listed without it.
      let made = try await client.execute(
        uri: "/api/api-keys", method: .post, headers: Harness.bearer(key, json: true),
        body: ByteBuffer(string: #"{"name": "laptop"}"#))
      #expect(made.status == .created)
      let second = try #require(try JSONValue.parse(made.body)["apiKey"]?.stringValue)
      let listed = try await client.execute(
        uri: "/api/api-keys", method: .get, headers: Harness.bearer(second))
      let text = String(buffer: listed.body)
      #expect(text.contains("laptop") && text.contains("first key"))
      #expect(!text.contains(key) && !text.contains(second))
      // Used keys show when they were last used.
      #expect(
        try JSONValue.parse(listed.body).arrayValue?.allSatisfy { $0["lastUsedAt"] != nil } == true)
      // A name taken, a bad name: refused.
      for (body, status) in [
        (#"{"name": "noor"}"#, HTTPResponse.Status.conflict), (#"{"name": "No Way"}"#, .badRequest),
      ] {
        try await client.execute(
          uri: "/api/users", method: .post, headers: Harness.bearer(setup.adminKey, json: true),
          body: ByteBuffer(string: body)
        ) { #expect($0.status == status, "\(body)") }
      }
    }
  }

  @Test func revokedAndExpiredKeysAre401() async throws {
    try await Harness.withRouter { setup, client in
      let made = try await client.execute(
        uri: "/api/api-keys", method: .post, headers: Harness.bearer(setup.memberKey, json: true),
        body: ByteBuffer(string: #"{"name": "ci"}"#))
      let json = try JSONValue.parse(made.body)
      let key = try #require(json["apiKey"]?.stringValue)
      let id = try #require(json["key"]?["id"]?.stringValue)
      try await client.execute(uri: "/api/sandboxes", method: .get, headers: Harness.bearer(key)) {
        #expect($0.status == .ok)
      }
      // Another user cannot revoke it (it is not theirs: 404); its owner can, at once.
      try await client.execute(
        uri: "/api/api-keys/\(id)", method: .delete, headers: Harness.bearer(setup.adminKey)
      ) { #expect($0.status == .notFound) }
      try await client.execute(
        uri: "/api/api-keys/\(id)", method: .delete, headers: Harness.bearer(setup.memberKey)
      ) { #expect($0.status == .noContent) }
      try await client.execute(uri: "/api/sandboxes", method: .get, headers: Harness.bearer(key)) {
        #expect($0.status == .unauthorized)
      }
      // An expired key (its expiry passed a second ago) is refused; one that expires in an
      // hour works.
      for (offset, status) in [(-1.0, HTTPResponse.Status.unauthorized), (3600, .ok)] {
        let (record, secret) = APIKeys.make(
          userId: setup.memberId, name: "timed", expiresAt: Date().addingTimeInterval(offset))
        try setup.host.database.insert(record)
        try await client.execute(
          uri: "/api/sandboxes", method: .get, headers: Harness.bearer(secret)
        ) { #expect($0.status == status, "expiry \(offset) s") }
      }
      // A lifetime outside its bounds is refused at creation; one inside them is taken.
      for (seconds, status) in [(0, HTTPResponse.Status.badRequest), (3600, .created)] {
        try await client.execute(
          uri: "/api/api-keys", method: .post,
          headers: Harness.bearer(setup.memberKey, json: true),
          body: ByteBuffer(string: #"{"name": "timed", "expiresInSeconds": \#(seconds)}"#)
        ) { #expect($0.status == status, "\(seconds) s") }
      }
    }
  }

  /// Events carry their owner, a failed create's too (its owner's subscribers see it go).
  @Test func aFailedCreatesEventsNameItsOwner() async throws {
    let host = try FakeHost()
    defer { Task { await host.tearDown() } }
    host.faults.fail(at: .boot)
    await #expect(throws: AtelierError.self) {
      _ = try await host.service.create(CreateSandboxRequest(), owner: "u00000000001")
    }
    var seen: [EventBus.Event] = []
    for await event in await host.service.events.subscribe(after: 0) {
      seen.append(event)
      if event.type == "sandbox.deleted" { break }
    }
    #expect(seen.map(\.type) == ["sandbox.created", "sandbox.deleted"])
    #expect(seen.allSatisfy { $0.ownerId == "u00000000001" })
  }
}
