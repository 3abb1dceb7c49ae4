import ArgumentParser
import AsyncHTTPClient
import AtelierCore
import Foundation

struct Snapshots: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshot", abstract: "List and delete snapshots.",
    subcommands: [List.self, Remove.self])

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List snapshots.")
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let snapshots = try await client.get("/api/snapshots", as: [SnapshotInfo].self)
      if json { return try printJSON(snapshots) }
      printTable(
        ["ID", "SANDBOX", "NAME", "SIZE", "CREATED"],
        snapshots.map {
          [$0.id, $0.sandboxId, $0.name, "\($0.sizeBytes >> 20) MiB", ISO8601.format($0.createdAt)]
        })
    }
  }

  struct Remove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "rm", abstract: "Delete snapshots.")
    @Argument(help: "Snapshot ids.") var ids: [String]

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      for id in ids {
        _ = try await client.send(.DELETE, "/api/snapshots/\(id)")
        print("deleted \(id)")
      }
    }
  }
}

/// `atelier events`: the manager's event stream, one line per event.
struct Events: AsyncParsableCommand {
  static let configuration = CommandConfiguration(abstract: "Follow sandbox and snapshot events.")
  @Flag(help: "Print each event's raw JSON data.") var json = false

  func run() async throws {
    let client = try ManagerClient.make(config: try loadConfig())
    let response = try await client.stream(.GET, "/api/events")
    var pending = ""
    var type = ""
    for try await buffer in response.body {
      pending += String(buffer: buffer)
      while let newline = pending.firstIndex(of: "\n") {
        let line = String(pending[..<newline])
        pending.removeSubrange(...newline)
        if line.hasPrefix("event: ") { type = String(line.dropFirst(7)) }
        guard line.hasPrefix("data: ") else { continue }
        let data = Data(line.dropFirst(6).utf8)
        if json {
          print(String(decoding: data, as: UTF8.self))
        } else if let event = try? JSONDecoder.atelier.decode(SandboxEventLine.self, from: data) {
          if let sandbox = event.sandbox {
            let from = event.previousStatus.map { "\($0) → " } ?? ""
            print("\(type) \(sandbox.id) \(from)\(sandbox.status)")
          } else if let snapshot = event.snapshot {
            print("\(type) \(snapshot.id) of \(snapshot.sandboxId)")
          }
        }
        fflush(nil)
      }
    }
  }

  struct SandboxEventLine: Decodable {
    struct Sandbox: Decodable {
      var id: String
      var status: String
    }
    struct Snapshot: Decodable {
      var id: String
      var sandboxId: String
    }
    var sandbox: Sandbox?
    var snapshot: Snapshot?
    var previousStatus: String?
  }
}
