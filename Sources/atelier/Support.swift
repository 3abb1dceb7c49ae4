import AsyncHTTPClient
import AtelierCore
import AtelierHost
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Configuration for CLI commands; a bad setting ends the command with its one-line message.
func loadConfig() throws -> Config {
  do {
    return try Config.load()
  } catch let error as ConfigError {
    throw CLIError(error.description)
  }
}

/// A failure shown as one line on stderr with exit code 1.
struct CLIError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}

func bootstrapLogging(level: String) {
  LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardError(label: label)
    handler.logLevel = Logger.Level(rawValue: level) ?? .info
    return handler
  }
}

/// The running binary's folder (its real path, symlinks resolved).
func executableDirectory() -> String {
  let path =
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
    ?? CommandLine.arguments[0]
  return (path as NSString).deletingLastPathComponent
}

/// `ATELIER_AGENT_PATH`, else `atelier-agent` beside the binary: beside the path it was run
/// by, any symlink on the way, or its real path (the first that exists).
func resolvedAgentPath(_ config: Config) -> String {
  if !config.agentPath.isEmpty { return config.agentPath }
  let candidates = ExecutablePaths.current().map {
    ($0 as NSString).deletingLastPathComponent + "/atelier-agent"
  }
  return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    ?? "\(executableDirectory())/atelier-agent"
}

/// Where image recipes are looked for (see `RecipeLocations`).
func recipeLocations(_ config: Config) -> RecipeLocations {
  RecipeLocations.resolve(
    explicit: config.recipesDir, executables: ExecutablePaths.current(),
    home: ProcessInfo.processInfo.environment["HOME"])
}

/// Talks to a manager: `ATELIER_URL` (else the one `atelier login` stored, else the local
/// one) with `ATELIER_TOKEN` (else the stored key for that URL, else the admin key in the local
/// data folder).
struct ManagerClient {
  let baseURL: String
  let token: String

  static func make(config: Config) throws -> ManagerClient {
    let environment = ProcessInfo.processInfo.environment
    let stored = Credentials.load()
    let url =
      environment["ATELIER_URL"].flatMap { $0.isEmpty ? nil : $0 } ?? stored?.url
      ?? config.managerURL
    var token = environment["ATELIER_TOKEN"] ?? ""
    if token.isEmpty, let stored,
      Credentials.normalized(stored.url) == Credentials.normalized(url)
    {
      token = stored.key
    }
    if token.isEmpty {
      guard let stored = try? String(contentsOfFile: config.adminTokenPath, encoding: .utf8) else {
        throw CLIError(
          "no API key: run `atelier login URL`, set ATELIER_TOKEN, or run on the manager's host with read access to \(config.adminTokenPath)"
        )
      }
      token = stored.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    return ManagerClient(
      baseURL: url.hasSuffix("/") ? String(url.dropLast()) : url, token: token)
  }

  /// Sends a request; an error answer becomes a CLIError with the server's message.
  func send(
    _ method: HTTPMethod, _ path: String, body: Data? = nil, timeout: Duration = .seconds(600)
  )
    async throws -> Data
  {
    var request = HTTPClientRequest(url: baseURL + path)
    request.method = method
    request.headers.add(name: "authorization", value: "Bearer \(token)")
    if let body {
      request.headers.add(name: "content-type", value: "application/json")
      request.body = .bytes(ByteBuffer(bytes: body))
    }
    let response: HTTPClientResponse
    let buffer: ByteBuffer
    do {
      response = try await HTTPClient.shared.execute(
        request, timeout: .seconds(Int64(timeout.components.seconds)))
      buffer = try await response.body.collect(upTo: 512 << 20)
    } catch {
      throw CLIError(
        "cannot reach the manager at \(baseURL) (\(error)); is `atelier serve` running?")
    }
    let data = Data(buffer.readableBytesView)
    guard response.status.code < 400 else {
      if let body = try? JSONDecoder().decode(ErrorBody.self, from: data) {
        throw CLIError("\(body.message) (\(body.error))")
      }
      throw CLIError("manager answered \(response.status.code)")
    }
    return data
  }

  /// Sends a request with a streamed body and returns the response unread (for downloads).
  func stream(_ method: HTTPMethod, _ path: String, body: HTTPClientRequest.Body? = nil)
    async throws
    -> HTTPClientResponse
  {
    var request = HTTPClientRequest(url: baseURL + path)
    request.method = method
    request.headers.add(name: "authorization", value: "Bearer \(token)")
    if let body { request.body = body }
    let response: HTTPClientResponse
    do {
      response = try await HTTPClient.shared.execute(request, timeout: .hours(6))
    } catch {
      throw CLIError(
        "cannot reach the manager at \(baseURL) (\(error)); is `atelier serve` running?")
    }
    guard response.status.code < 400 else {
      let data = Data((try? await response.body.collect(upTo: 1 << 20))?.readableBytesView ?? [])
      if let body = try? JSONDecoder().decode(ErrorBody.self, from: data) {
        throw CLIError("\(body.message) (\(body.error))")
      }
      throw CLIError("manager answered \(response.status.code)")
    }
    return response
  }

  /// The WebSocket URL of a manager path.
  func webSocketURL(_ path: String) -> String {
    let url = baseURL.replacingOccurrences(of: "https://", with: "wss://")
      .replacingOccurrences(of: "http://", with: "ws://")
    return url + path
  }

  func get<T: Decodable>(_ path: String, as type: T.Type) async throws -> T {
    try decode(try await send(.GET, path))
  }

  func post<Body: Encodable, T: Decodable>(_ path: String, _ body: Body, as type: T.Type)
    async throws -> T
  {
    try decode(try await send(.POST, path, body: try JSONEncoder().encode(body)))
  }

  func decode<T: Decodable>(_ data: Data, as type: T.Type) throws -> T {
    try decode(data)
  }

  func decode<T: Decodable>(_ data: Data) throws -> T {
    do {
      return try JSONDecoder.atelier.decode(T.self, from: data)
    } catch {
      throw CLIError("unexpected answer from the manager: \(error)")
    }
  }
}

/// Prints `value` as JSON (for --json).
func printJSON<T: Encodable>(_ value: T) throws {
  let encoder = JSONEncoder.atelier
  encoder.outputFormatting.insert(.prettyPrinted)
  print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Left-aligned columns.
func printTable(_ header: [String], _ rows: [[String]]) {
  let all = [header] + rows
  let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
  for row in all {
    print(
      row.enumerated().map { index, cell in
        index == row.count - 1
          ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
      }.joined(separator: "  "))
  }
}

extension FileHandle {
  static func writeError(_ text: String) {
    FileHandle.standardError.write(Data((text + "\n").utf8))
  }
}
