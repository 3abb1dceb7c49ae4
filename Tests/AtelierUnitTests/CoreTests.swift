import AtelierAgentAPI
import Foundation
import Testing

@testable import AtelierCore

@Suite struct CoreTests {
  @Test func identifiersAreTwelveLowercaseAlphanumericsStartingWithALetter() {
    var seen = Set<String>()
    for _ in 0..<500 {
      let id = Identifier.make()
      #expect(Identifier.isValid(id))
      #expect(id.first!.isLetter)
      seen.insert(id)
    }
    #expect(seen.count == 500)
    #expect(!Identifier.isValid("ABCDEFGHIJKL"))
    #expect(!Identifier.isValid("1bcdefghijkl"))
    #expect(!Identifier.isValid("abc"))
  }

  @Test func errorCodesMapToStatuses() {
    let expected: [AtelierError.Code: Int] = [
      .notFound: 404, .validation: 400, .conflict: 409, .sandboxNotRunning: 409,
      .resourceExhausted: 429, .unauthorized: 401, .forbidden: 403, .methodNotAllowed: 405,
      .bootFailed: 503,
      .unavailable: 503, .internal: 500,
    ]
    for code in AtelierError.Code.allCases {
      #expect(code.httpStatus == expected[code], "\(code)")
    }
  }

  @Test func bootParametersRoundTripThroughTheKernelCommandLine() {
    let parameters = GuestBootParameters(
      sandboxId: "abc123def456", hostname: "sbx-abc123def456", ipv4: "10.0.2.15/24",
      gateway: "10.0.2.2", dns: "10.0.2.3")
    let line = "console=ttyS0 quiet " + parameters.kernelArguments.joined(separator: " ") + "\n"
    #expect(GuestBootParameters(commandLine: line) == parameters)
    #expect(GuestBootParameters(commandLine: "console=ttyS0 quiet") == nil)
  }

  @Test func execRequestValidation() {
    #expect(ExecRequest().validationProblem != nil)
    #expect(ExecRequest(command: "ls", argv: ["ls"]).validationProblem != nil)
    #expect(ExecRequest(command: "").validationProblem != nil)
    #expect(ExecRequest(argv: []).validationProblem != nil)
    #expect(ExecRequest(command: "ls", timeoutMs: 0).validationProblem != nil)
    #expect(ExecRequest(command: "ls").validationProblem == nil)
    #expect(ExecRequest(argv: ["ls", "-l"], timeoutMs: 1000).validationProblem == nil)
  }

  @Test func datesEncodeAsISO8601WithMilliseconds() throws {
    let date = Date(timeIntervalSince1970: 1_800_000_000.25)
    let data = try JSONEncoder.atelier.encode(["at": date])
    #expect(String(decoding: data, as: UTF8.self) == #"{"at":"2027-01-15T08:00:00.250Z"}"#)
    let decoded = try JSONDecoder.atelier.decode([String: Date].self, from: data)
    #expect(decoded["at"] == date)
  }
}
