import AtelierAgentAPI
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

@testable import AtelierAgent

/// The agent's writes with a symlink planted at the target path: what it points at is never
/// written, chowned or chmodded (the agent runs as root; a guest user can plant links).
@Suite struct FileSafetyTests {
  let scratch: String
  let victim: String

  init() throws {
    scratch = "/tmp/atl-agent-files-\(UInt32.random(in: 0...UInt32.max))"
    victim = "\(scratch)/outside/victim"
    try FileManager.default.createDirectory(
      atPath: "\(scratch)/outside", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(
      atPath: "\(scratch)/inside", withIntermediateDirectories: true)
    try "precious".write(toFile: victim, atomically: true, encoding: .utf8)
    chmod(victim, 0o640)
  }

  func victimUntouched() throws {
    #expect(try String(contentsOfFile: victim, encoding: .utf8) == "precious")
    var info = stat()
    #expect(stat(victim, &info) == 0)
    #expect(info.st_mode & 0o7777 == 0o640)
    #expect(info.st_uid == getuid())
  }

  func plantLink(_ name: String, to target: String) throws -> String {
    let path = "\(scratch)/inside/\(name)"
    try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: target)
    return path
  }

  func kind(_ path: String) -> mode_t {
    var info = stat()
    return lstat(path, &info) == 0 ? info.st_mode & S_IFMT : 0
  }

  @Test func uploadsWritesMkdirAndExtractionNeverFollowALink() async throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let agent = TestAgent()
    defer { agent.cleanUp() }
    let upload = try plantLink("upload", to: victim)
    let written = try plantLink("written", to: victim)
    let folder = try plantLink("folder", to: "\(scratch)/outside")
    try await agent.app.test(.router) { client in
      // PUT /files onto a link, asking for another owner and mode.
      try await client.execute(
        uri: "/files?path=\(upload)&mode=0666&owner=1234:1234", method: .put,
        headers: TestAgent.bearer(), body: ByteBuffer(string: "uploaded")
      ) { #expect($0.status == .created, "\($0.text)") }
      #expect(kind(upload) == S_IFREG)
      #expect(try String(contentsOfFile: upload, encoding: .utf8) == "uploaded")
      var info = stat()
      _ = lstat(upload, &info)
      #expect(info.st_uid == 1234 && info.st_mode & 0o7777 == 0o666)

      // POST /files/write onto a link.
      let request = WriteFilesRequest(files: [
        .init(path: written, content: "written", mode: "0600", owner: "1234")
      ])
      try await client.execute(
        uri: "/files/write", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: try JSONEncoder().encode(request))
      ) { #expect($0.status == .ok, "\($0.text)") }
      #expect(kind(written) == S_IFREG)
      #expect(try String(contentsOfFile: written, encoding: .utf8) == "written")

      // mkdir of a path that is a link to a folder: the folder it names keeps its owner.
      let mkdir = MkdirRequest(path: folder, mode: "0777", owner: "1234")
      try await client.execute(
        uri: "/files/mkdir", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: try JSONEncoder().encode(mkdir))
      ) { _ in }
      var outside = stat()
      _ = stat("\(scratch)/outside", &outside)
      #expect(outside.st_uid == getuid() && outside.st_mode & 0o777 != 0o777)

      // A tar stream into the folder holding the links: members through `folder` stop, and
      // one named like the `upload` link replaces it.
      var tar = CraftedTar()
      tar.file("folder/planted", "through the link")
      tar.file("written", "from tar")
      tar.header("dev", type: "3")
      tar.file("setuid", "x", mode: 0o4755)
      tar.end()
      try await client.execute(
        uri: "/files/archive?path=\(scratch)/inside&owner=1234:1234", method: .put,
        headers: TestAgent.bearer(), body: ByteBuffer(bytes: tar.bytes)
      ) { #expect($0.status == .created, "\($0.text)") }
      #expect(!FileManager.default.fileExists(atPath: "\(scratch)/outside/planted"))
      #expect(try String(contentsOfFile: written, encoding: .utf8) == "from tar")
      #expect(kind("\(scratch)/inside/dev") == 0)
      _ = lstat("\(scratch)/inside/setuid", &info)
      #expect(info.st_mode & 0o7000 == 0 && info.st_uid == 1234, "owner from the descriptor")
    }
    try victimUntouched()
  }

  @Test func archivesOfKernelFileSystemsAreRefusedAndOthersStream() async throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.router) { client in
      // "/" holds /proc (whose kcore never ends), /proc is one, /proc/self is inside one.
      for path in ["/", "/proc", "/proc/self", "/sys"] {
        try await client.execute(
          uri: "/files/archive?path=\(path)", method: .get, headers: TestAgent.bearer()
        ) {
          #expect($0.status == .forbidden, "\(path): \($0.text)")
          #expect($0.text.contains("kernel file system"), "\(path)")
        }
      }
      // The positive control: an ordinary folder streams as a tar.
      try await client.execute(
        uri: "/files/archive?path=\(scratch)/outside", method: .get, headers: TestAgent.bearer()
      ) {
        #expect($0.status == .ok, "\($0.text)")
        #expect($0.headers[.contentType] == "application/x-tar")
        #expect($0.body.readableBytes >= 1024)
      }
    }
  }

  @Test func aHardLinkAtTheTargetIsReplacedNotWrittenThrough() async throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let agent = TestAgent()
    defer { agent.cleanUp() }
    let linked = "\(scratch)/outside/linked"
    #expect(link(victim, linked) == 0)
    try await agent.app.test(.router) { client in
      try await client.execute(
        uri: "/files?path=\(linked)", method: .put, headers: TestAgent.bearer(),
        body: ByteBuffer(string: "new")
      ) { #expect($0.status == .created) }
    }
    #expect(try String(contentsOfFile: linked, encoding: .utf8) == "new")
    try victimUntouched()
  }
}
