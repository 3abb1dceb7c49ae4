import ArgumentParser
import AsyncHTTPClient
import AtelierAgentAPI
import AtelierProcess
import AtelierTar
import Foundation
import NIOCore

extension SandboxCommand {
  struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "cp",
      abstract: "Copy files or folders between here and a sandbox (ID:/path on one side).")
    @Argument(help: "Source: a local path or ID:/path.") var source: String
    @Argument(help: "Destination: a local path or ID:/path.") var destination: String

    static func remote(_ text: String) -> (id: String, path: String)? {
      guard let colon = text.firstIndex(of: ":") else { return nil }
      let id = String(text[..<colon])
      let path = String(text[text.index(after: colon)...])
      guard !id.isEmpty, !id.contains("/"), path.hasPrefix("/") else { return nil }
      return (id, path)
    }

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      switch (Self.remote(source), Self.remote(destination)) {
      case (nil, .some(let target)): try await upload(client, local: source, to: target)
      case (.some(let origin), nil): try await download(client, from: origin, local: destination)
      default: throw CLIError("exactly one side must be ID:/absolute/path")
      }
    }

    func query(_ path: String) -> String {
      "path="
        + (path.addingPercentEncoding(
          withAllowedCharacters: .urlQueryAllowed.subtracting(["&", "=", "+"])) ?? path)
    }

    func upload(_ client: ManagerClient, local: String, to target: (id: String, path: String))
      async throws
    {
      var isDirectory: ObjCBool = false
      guard FileManager.default.fileExists(atPath: local, isDirectory: &isDirectory) else {
        throw CLIError("\(local): no such file or directory")
      }
      var remotePath = target.path
      // Into an existing remote folder (or one named with a trailing slash): keep the name.
      let existing = try? await client.get(
        "/api/sandboxes/\(target.id)/files/stat?\(query(remotePath))", as: FileEntry.self)
      if existing?.type == .directory || remotePath.hasSuffix("/") {
        remotePath =
          (remotePath.hasSuffix("/") ? remotePath : remotePath + "/")
          + URL(fileURLWithPath: local).lastPathComponent
      }
      if isDirectory.boolValue {
        let tar = try RunningProcess.start(
          SpawnOptions(
            executable: "tar", arguments: ["-c", "-f", "-", "-C", local, "."],
            environment: ProcessInfo.processInfo.environment),
          stdin: false, stdout: true, stderr: false)
        _ = try await client.stream(
          .PUT, "/api/sandboxes/\(target.id)/files/archive?\(query(remotePath))",
          body: .stream(Self.chunks(of: tar.stdout), length: .unknown))
        _ = await tar.waitForExit()
        tar.closeAll()
      } else {
        let fd = open(local, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CLIError("\(local): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let size = (try? FileManager.default.attributesOfItem(atPath: local)[.size] as? Int) ?? nil
        _ = try await client.stream(
          .PUT, "/api/sandboxes/\(target.id)/files?\(query(remotePath))",
          body: .stream(Self.chunks(of: fd), length: size.map { .known(Int64($0)) } ?? .unknown))
      }
    }

    func download(_ client: ManagerClient, from origin: (id: String, path: String), local: String)
      async throws
    {
      let entry = try await client.get(
        "/api/sandboxes/\(origin.id)/files/stat?\(query(origin.path))", as: FileEntry.self)
      var isDirectory: ObjCBool = false
      let localExists = FileManager.default.fileExists(atPath: local, isDirectory: &isDirectory)
      var target = local
      // The name is the one asked for, not what the guest answered (hostile input).
      let name = origin.path.split(separator: "/").last.map(String.init) ?? "root"
      if localExists && isDirectory.boolValue { target = "\(local)/\(name)" }
      if entry.type == .directory {
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        let response = try await client.stream(
          .GET, "/api/sandboxes/\(origin.id)/files/archive?\(query(origin.path))")
        try await Self.unpack(response.body, into: target)
      } else {
        let response = try await client.stream(
          .GET, "/api/sandboxes/\(origin.id)/files?\(query(origin.path))")
        let fd = open(target, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CLIError("\(target): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        for try await buffer in response.body {
          guard await BlockingIO.write(fd, Array(buffer.readableBytesView)) else {
            throw CLIError("\(target): \(String(cString: strerror(errno)))")
          }
        }
      }
    }

    /// A tar stream the guest produced is hostile input: unpacked by Atelier's own reader with
    /// no owners, the user's rwx only, no devices, FIFOs, `..` or absolute members, and no
    /// links out of `target` (the system's tar cannot promise all of that). What is skipped
    /// is said on stderr.
    static func unpack(_ body: HTTPClientResponse.Body, into target: String) async throws {
      let extractor: TarExtractor
      do {
        extractor = try TarExtractor(directory: target, policy: .untrusted)
      } catch {
        throw CLIError("cannot extract into \(target): \(error)")
      }
      do {
        for try await buffer in body { try extractor.write(Array(buffer.readableBytesView)) }
        try extractor.finish()
      } catch let error as TarError {
        throw CLIError("the sandbox sent a broken archive: \(error)")
      }
      for skipped in extractor.skipped {
        FileHandle.standardError.write(Data("atelier: \(skipped)\n".utf8))
      }
    }

    /// The bytes of a descriptor as a stream of buffers (read off the cooperative pool).
    static func chunks(of fd: Int32) -> AsyncStream<ByteBuffer> {
      AsyncStream { continuation in
        Task {
          while true {
            let bytes = await BlockingIO.read(fd, size: 256 << 10)
            if bytes.isEmpty { break }
            continuation.yield(ByteBuffer(bytes: bytes))
          }
          continuation.finish()
        }
      }
    }
  }

  struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a service's output.")
    @Argument(help: "Sandbox id.") var id: String
    @Argument(help: "Service name.") var service: String
    @Flag(name: .shortAndLong, help: "Keep printing new output.") var follow = false
    @Flag(help: "A dev command rather than a service.") var dev = false

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let kind = dev ? "dev" : "services"
      var offset: Int64 = 0
      while true {
        let chunk = try await client.get(
          "/api/sandboxes/\(id)/\(kind)/\(service)/logs?offset=\(offset)&limit=1048576",
          as: LogChunk.self)
        FileHandle.standardOutput.write(Data(chunk.content.utf8))
        offset = chunk.nextOffset
        if chunk.content.isEmpty {
          guard follow else { return }
          try await Task.sleep(for: .seconds(1))
        }
      }
    }
  }
}
