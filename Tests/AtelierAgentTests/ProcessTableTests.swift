import AsyncHTTPClient
import AtelierAgentAPI
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import NIOHTTP1
import Testing

@testable import AtelierAgent

/// The agent's process table on the host: a started process streams start, its output and
/// its end as JSON lines, and leaves the table once it has ended.
@Suite struct ProcessTableTests {
  static func frames(_ text: String) throws -> [ProcessEventFrame] {
    try text.split(separator: "\n").map {
      try JSONDecoder().decode(ProcessEventFrame.self, from: Data($0.utf8))
    }
  }

  @Test func aProcessStreamsItsOutputAndItsEnd() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.live) { client in
      let request = ProcessStartRequest(
        argv: ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], user: "root")
      let frames = try await client.execute(
        uri: "/processes", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: try JSONEncoder().encode(request))
      ) { response in
        #expect(response.status == .ok)
        return try Self.frames(response.text)
      }
      #expect(frames.first?.type == .start)
      let output = { (kind: ProcessEventFrame.Kind) in
        frames.filter { $0.type == kind }.compactMap { Data(base64Encoded: $0.data ?? "") }
          .reduce(Data(), +)
      }
      #expect(String(decoding: output(.stdout), as: UTF8.self) == "out\n")
      #expect(String(decoding: output(.stderr), as: UTF8.self) == "err\n")
      let end = try #require(frames.last)
      #expect(end.type == .end && end.exitCode == 3 && end.exited == true)
      #expect(end.status == "exit status 3")
      try await client.execute(uri: "/processes", method: .get, headers: TestAgent.bearer()) {
        #expect($0.text == "[]")
      }
    }
  }

  /// A side request on a connection of its own (the test client has one, busy with the stream).
  static func side(_ port: Int, _ method: HTTPMethod, _ path: String, _ body: Data? = nil)
    async throws -> (Int, Data)
  {
    var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
    request.method = method
    request.headers.add(name: "authorization", value: "Bearer \(TestAgent.key)")
    if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
    let data = try await response.body.collect(upTo: 1 << 20)
    return (Int(response.status.code), Data(data.readableBytesView))
  }

  @Test func inputReachesStdinAndClosingItEndsTheProcess() async throws {
    let agent = TestAgent()
    defer { agent.cleanUp() }
    try await agent.app.test(.live) { client in
      let port = try #require(client.port)
      let request = ProcessStartRequest(argv: ["/bin/cat"], user: "root", stdin: true, tag: "c")
      async let streamed = client.execute(
        uri: "/processes", method: .post, headers: TestAgent.bearer(),
        body: ByteBuffer(bytes: try JSONEncoder().encode(request))
      ) { try Self.frames($0.text) }
      var pid: Int32?
      for _ in 0..<100 where pid == nil {
        let (_, listed) = try await Self.side(port, .GET, "/processes")
        pid = try JSONDecoder().decode([GuestProcess].self, from: listed).first?.pid
        if pid == nil { try await Task.sleep(for: .milliseconds(20)) }
      }
      let found = try #require(pid)
      let input = ProcessInputRequest(data: Data("typed\n".utf8).base64EncodedString())
      let (written, _) = try await Self.side(
        port, .POST, "/processes/\(found)/input", try JSONEncoder().encode(input))
      #expect(written == 204)
      let (closed, _) = try await Self.side(port, .POST, "/processes/\(found)/close-stdin")
      #expect(closed == 204)
      let frames = try await streamed
      let stdout = frames.filter { $0.type == .stdout }
        .compactMap { Data(base64Encoded: $0.data ?? "") }.reduce(Data(), +)
      #expect(String(decoding: stdout, as: UTF8.self) == "typed\n")
      #expect(frames.last?.type == .end && frames.last?.exitCode == 0)
    }
  }
}
