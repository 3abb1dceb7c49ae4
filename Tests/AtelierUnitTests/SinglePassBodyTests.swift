import AtelierHTTP
import Hummingbird
import NIOCore
import Testing

@testable import AtelierServer

/// A proxied upload the HTTP client retries is read once: the second read fails the request
/// instead of trapping in Hummingbird's request body (which would end the manager).
@Suite struct SinglePassBodyTests {
  @Test func aSecondReadFailsInsteadOfTrapping() async throws {
    let body = SinglePassSequence(RequestBody(buffer: ByteBuffer(string: "upload")))
    var first = body.makeAsyncIterator()
    let chunk = try await first.next()
    #expect(chunk.map { String(buffer: $0) } == "upload")
    var second = body.makeAsyncIterator()
    await #expect(throws: (any Error).self) { _ = try await second.next() }
  }
}
