import Foundation

/// envd's protobuf messages in proto3 JSON form, as E2B's SDKs send and read them: camelCase
/// names, 64-bit integers as strings, bytes as base64, enums by name, unset fields absent.
/// Decoding also takes what proto JSON allows besides (numbers as strings, enums as numbers).
enum Envd {
  struct Empty: Codable, Sendable {}

  /// A proto integer: a JSON number or a string of one.
  struct Number: Codable, Sendable, Equatable {
    var value: Int64
    init(_ value: Int64) { self.value = value }
    init(from decoder: any Decoder) throws {
      let container = try decoder.singleValueContainer()
      if let number = try? container.decode(Int64.self) {
        value = number
      } else if let text = try? container.decode(String.self), let number = Int64(text) {
        value = number
      } else {
        throw DecodingError.dataCorruptedError(in: container, debugDescription: "not an integer")
      }
    }
    func encode(to encoder: any Encoder) throws {
      var container = encoder.singleValueContainer()
      try container.encode(value)
    }
  }

  /// A proto enum: its name, or its number.
  struct EnumValue: Codable, Sendable, Equatable {
    var name: String?
    var number: Int?
    init(from decoder: any Decoder) throws {
      let container = try decoder.singleValueContainer()
      if let number = try? container.decode(Int.self) {
        self.number = number
      } else {
        name = try container.decode(String.self)
      }
    }
    func encode(to encoder: any Encoder) throws {
      var container = encoder.singleValueContainer()
      if let name { try container.encode(name) } else { try container.encode(number ?? 0) }
    }
  }

  // MARK: process.Process

  struct ProcessConfig: Codable, Sendable {
    var cmd: String?
    var args: [String]?
    var envs: [String: String]?
    var cwd: String?
  }

  struct PTY: Codable, Sendable {
    struct Size: Codable, Sendable {
      var cols: Number?
      var rows: Number?
    }
    var size: Size?
  }

  struct StartRequest: Codable, Sendable {
    var process: ProcessConfig?
    var pty: PTY?
    var tag: String?
    var stdin: Bool?
  }

  struct ProcessSelector: Codable, Sendable {
    var pid: Number?
    var tag: String?
  }

  struct ConnectRequest: Codable, Sendable { var process: ProcessSelector? }

  struct ProcessInput: Codable, Sendable {
    var stdin: String?
    var pty: String?
  }

  struct SendInputRequest: Codable, Sendable {
    var process: ProcessSelector?
    var input: ProcessInput?
  }

  struct StreamInputRequest: Codable, Sendable {
    struct Start: Codable, Sendable { var process: ProcessSelector? }
    struct DataEvent: Codable, Sendable { var input: ProcessInput? }
    var start: Start?
    var data: DataEvent?
    var keepalive: Empty?
  }

  struct SendSignalRequest: Codable, Sendable {
    var process: ProcessSelector?
    var signal: EnumValue?
  }

  struct CloseStdinRequest: Codable, Sendable { var process: ProcessSelector? }

  struct UpdateRequest: Codable, Sendable {
    var process: ProcessSelector?
    var pty: PTY?
  }

  struct ProcessEvent: Codable, Sendable {
    struct Start: Codable, Sendable { var pid: Int32 }
    struct DataEvent: Codable, Sendable {
      var stdout: String?
      var stderr: String?
      var pty: String?
    }
    struct End: Codable, Sendable {
      var exitCode: Int32
      var exited: Bool
      var status: String
      var error: String?
    }
    var start: Start?
    var data: DataEvent?
    var end: End?
    var keepalive: Empty?
  }

  /// `StartResponse` and `ConnectResponse`: one event.
  struct ProcessEventResponse: Codable, Sendable { var event: ProcessEvent }

  struct ProcessInfo: Codable, Sendable {
    var config: ProcessConfig
    var pid: Int32
    var tag: String?
  }

  struct ListResponse: Codable, Sendable { var processes: [ProcessInfo] }

  // MARK: filesystem.Filesystem

  struct EntryInfo: Codable, Sendable {
    var name: String
    /// `FILE_TYPE_FILE`, `FILE_TYPE_DIRECTORY`, `FILE_TYPE_SYMLINK`.
    var type: String
    var path: String
    /// int64: a string in proto JSON.
    var size: String
    var mode: UInt32
    var permissions: String
    var owner: String
    var group: String
    /// RFC 3339.
    var modifiedTime: String?
    var symlinkTarget: String?
    var metadata: [String: String]?
    var isSymlink: Bool?
  }

  struct PathRequest: Codable, Sendable { var path: String? }

  struct EntryResponse: Codable, Sendable { var entry: EntryInfo }

  struct ListDirRequest: Codable, Sendable {
    var path: String?
    var depth: Number?
  }

  struct ListDirResponse: Codable, Sendable { var entries: [EntryInfo] }

  struct MoveRequest: Codable, Sendable {
    var source: String?
    var destination: String?
  }

  struct WatchRequest: Codable, Sendable {
    var path: String?
    var recursive: Bool?
    var includeEntry: Bool?
    var allowNetworkMounts: Bool?
  }

  struct FilesystemEvent: Codable, Sendable {
    var name: String
    /// `EVENT_TYPE_CREATE`, `…_WRITE`, `…_REMOVE`, `…_RENAME`, `…_CHMOD`.
    var type: String
    var entry: EntryInfo?
  }

  struct WatchDirResponse: Codable, Sendable {
    var start: Empty?
    var filesystem: FilesystemEvent?
    var keepalive: Empty?
  }

  struct CreateWatcherResponse: Codable, Sendable { var watcherId: String }
  struct WatcherRequest: Codable, Sendable { var watcherId: String? }
  struct GetWatcherEventsResponse: Codable, Sendable { var events: [FilesystemEvent] }

  /// What `POST /files` answers for each file written.
  struct WriteInfo: Codable, Sendable {
    var name: String
    var type: String
    var path: String
    var metadata: [String: String]?
  }
}
