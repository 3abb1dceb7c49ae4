import AtelierProcess
import Foundation
import Testing

/// `atelier doctor` under many configurations: every sentence it can print is well formed (no
/// empty list, no dangling punctuation), and its KVM, acceleration and Firecracker lines tell
/// the same story as the manager's probe.
@Suite struct DoctorTests {
  typealias Finding = [String: Any]

  static func findings(_ result: RunResult) throws -> [Finding] {
    guard
      let findings = try JSONSerialization.jsonObject(with: Data(result.stdoutText.utf8))
        as? [Finding]
    else { throw TestFailure("doctor printed no JSON list: \(result.stdoutText)") }
    return findings
  }

  static func detail(_ findings: [Finding], _ name: String) -> String {
    findings.first { $0["name"] as? String == name }?["detail"] as? String ?? ""
  }

  /// The defects of sentences built from lists: "ports )", "missing: ;", "a, , b"…
  static let defects = [
    #"\(\s*\)"#, #"\(\s"#, #"\s\)"#, #"\s[,;:]"#, #"[:;,]\s*[;,)]"#, #"[:;,]\s*$"#,
    #"\s{2,}"#, #"^\s|\s$"#,
    #"\bports?\s*(\)|$|;)"#, #"missing:?\s*(\)|$|;)"#, #"\bnil\b"#, #"Optional\("#,
  ]

  static func defects(in text: String) -> [String] {
    defects.filter { text.range(of: $0, options: .regularExpression) != nil }
  }

  static func expectWellFormed(_ findings: [Finding]) {
    #expect(!findings.isEmpty)
    for finding in findings {
      let name = finding["name"] as? String ?? "?"
      #expect(finding["ok"] is Bool, "\(name)")
      for key in ["detail", "fix"] {
        let text = finding[key] as? String ?? ""
        if key == "detail" { #expect(!text.isEmpty, "\(name) has no detail") }
        for pattern in defects(in: text) {
          Issue.record("\(name).\(key) matches \(pattern): \(text)")
        }
      }
    }
  }

  func doctor(_ extra: [String: String], data: String) async throws -> (RunResult, [Finding]) {
    var environment = TestEnvironment.baseEnvironment
    environment["ATELIER_DATA_DIR"] = data
    for (key, value) in extra { environment[key] = value }
    let result = try await TestEnvironment.cli(
      ["doctor", "--json"], environment: environment, timeout: .seconds(120))
    return (result, try Self.findings(result))
  }

  /// Positive control: the sentences doctor printed before are caught, good ones are not.
  @Test func theDefectPatternsCatchTheOldSentences() {
    for bad in [
      "iptables ATELIER-INPUT (guests reach only ports )", "missing: ", "jailer , as atelier",
      "configured;  no thin pool", "images: ()", "a, , b",
    ] {
      #expect(!Self.defects(in: bad).isEmpty, "\(bad)")
    }
    for good in [
      "iptables ATELIER-INPUT (guests reach only ping, DNS and ports 80, 8080 on the host)",
      "not configured; thin pool sandbox-vg/thin-pool present", "dev-base and tiny",
    ] {
      #expect(Self.defects(in: good).isEmpty, "\(good): \(Self.defects(in: good))")
    }
  }

  @Test func everySentenceIsWellFormedInEveryConfiguration() async throws {
    let data = try TestEnvironment.temporaryDirectory("atl-unpriv-doc")
    defer { try? FileManager.default.removeItem(atPath: data) }
    let configurations: [[String: String]] = [
      [:],
      ["ATELIER_NETWORK": "bridge"],
      ["ATELIER_NETWORK": "bridge", "ATELIER_BRIDGE_ALLOWED_PORTS": "8080"],
      ["ATELIER_NETWORK": "bridge", "ATELIER_BRIDGE_ALLOWED_PORTS": "8080,9000"],
      ["ATELIER_STORAGE": "lvm", "ATELIER_LVM_VG": "atl-unpriv-none"],
      [
        "ATELIER_VMM": "firecracker", "ATELIER_NETWORK": "bridge",
        "ATELIER_FIRECRACKER_JAILER": "/nonexistent/jailer", "ATELIER_JAILER_USER": "nobody-here",
      ],
      ["ATELIER_ACCEL": "tcg"], ["ATELIER_ACCEL": "kvm"], ["ATELIER_QEMU_VSOCK": "on"],
      ["ATELIER_QEMU_BINARY": "qemu-nonexistent", "ATELIER_AGENT_PATH": "/nonexistent/agent"],
      ["ATELIER_IMAGES_DIR": "/nonexistent/recipes"],
    ]
    for configuration in configurations {
      let (result, findings) = try await doctor(configuration, data: data)
      Self.expectWellFormed(findings)
      let failed = findings.contains { $0["ok"] as? Bool == false }
      #expect(result.exitCode == (failed ? 1 : 0), "\(configuration)")
      let names = Set(findings.compactMap { $0["name"] as? String })
      #expect(
        names.isSuperset(of: [
          "user", "data folder", "qemu", "kvm", "acceleration", "kernel", "images", "recipes",
          "tools: images", "agent", "firecracker", "lvm", "bridge", "vhost-vsock",
        ]), "\(names)")
    }
    // A missing tool is named with its package; the recipes' miss lists where it looked.
    let (_, missingQemu) = try await doctor(["ATELIER_QEMU_BINARY": "qemu-nonexistent"], data: data)
    #expect(Self.detail(missingQemu, "qemu").contains("qemu-nonexistent not found (looked in"))
    let (_, noRecipes) = try await doctor(["ATELIER_IMAGES_DIR": "/nonexistent/r"], data: data)
    #expect(Self.detail(noRecipes, "recipes") == "none found (looked in /nonexistent/r)")
    let (_, bridge) = try await doctor(["ATELIER_NETWORK": "bridge"], data: data)
    #expect(
      !Self.detail(bridge, "bridge").contains("ports"),
      Comment(rawValue: Self.detail(bridge, "bridge")))
  }

  /// Where KVM is accessible but does not run guests (this machine: PVM only), the probe says
  /// so, and no line claims KVM is usable; where it works, every line says it works.
  @Test func theKVMLinesAgreeWithTheProbe() async throws {
    let shared = try await TestEnvironment.sharedImage.ensure()
    let data = try TestEnvironment.temporaryDirectory("atl-unpriv-doc")
    defer { try? FileManager.default.removeItem(atPath: data) }
    try FileManager.default.createSymbolicLink(
      atPath: "\(data)/kernels", withDestinationPath: "\(shared)/kernels")
    let (_, findings) = try await doctor(["ATELIER_VMM": "qemu"], data: data)
    let kvm = Self.detail(findings, "kvm")
    let acceleration = Self.detail(findings, "acceleration")
    let firecracker = Self.detail(findings, "firecracker")
    let works = kvm.hasPrefix("KVM works")
    #expect(acceleration.contains(works ? "under KVM" : "under TCG"), "\(kvm) / \(acceleration)")
    for text in [kvm, acceleration, firecracker] {
      #expect(!text.contains("/dev/kvm usable"), "\(text)")
      if !works { #expect(!text.contains("KVM works"), "\(text)") }
    }
    if access("/dev/kvm", R_OK | W_OK) == 0 {
      // The same words about KVM on both lines.
      let words = kvm.split(separator: ":").first.map(String.init) ?? kvm
      #expect(firecracker.contains(words), "\(firecracker) / \(kvm)")
      // The verdict is the manager's own (kept for it in the data folder).
      let cached = try #require(FileManager.default.contents(atPath: "\(data)/accel-probe.json"))
      let verdict = try #require(try JSONSerialization.jsonObject(with: cached) as? [String: Any])
      #expect((verdict["acceleration"] as? String == "kvm") == works)
      // A second doctor reads the verdict: no second probe boot.
      let started = ContinuousClock.now
      let (_, again) = try await doctor(["ATELIER_VMM": "qemu"], data: data)
      #expect(ContinuousClock.now - started < .seconds(6))
      #expect(Self.detail(again, "kvm") == kvm)
    }
  }
}
