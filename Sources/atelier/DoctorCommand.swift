import ArgumentParser
import AtelierCore
import AtelierHost
import Foundation

struct Doctor: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Check this host: user, VMM, KVM, acceleration, kernel, images, data, tools.",
    discussion: """
      Every line is a finding: ok, or FAIL with a fix. Only what the configuration uses can \
      fail; the other backends are reported as "not configured". With an accessible /dev/kvm \
      and no earlier verdict, doctor runs the same short probe boot the manager runs (at most \
      8 s) and keeps its verdict for the manager.
      """)

  @Flag(help: "Print JSON.") var json = false

  struct Finding: Encodable {
    var name: String
    var ok: Bool
    var detail: String
    var fix: String
  }

  func run() async throws {
    let config = try loadConfig()
    // The probe's own log lines would repeat what the findings say.
    bootstrapLogging(level: "warning")
    let findings = await DoctorChecks(config: config).all()
    if json {
      try printJSON(findings)
    } else {
      for finding in findings {
        let mark = finding.ok ? "ok  " : "FAIL"
        let name = finding.name.padding(toLength: 13, withPad: " ", startingAt: 0)
        print("\(mark) \(name) \(finding.detail)")
        if !finding.ok && !finding.fix.isEmpty { print("     fix: \(finding.fix)") }
      }
    }
    if findings.contains(where: { !$0.ok }) { throw ExitCode(1) }
  }
}
