/// An iptables chain of ours, rebuilt from its rule list when it differs, and jumped to from a
/// built-in chain (`jumpFrom` with `match`, inserted first). Idempotent: a second `rebuild`
/// changes nothing; `matches` is what `plan` and `doctor` report.
struct IptablesChain: Sendable {
  /// `iptables` or `ip6tables`.
  var binary = "iptables"
  let name: String
  let rules: [[String]]
  let jumpFrom: String
  let match: [String]

  var jump: [String] { match + ["-j", name] }

  /// Whether the chain exists with exactly these rules and is jumped to.
  func matches(_ runner: any CommandRunning) async -> Bool {
    let listed = await runner.probe(Command(binary, ["-w", "-S", name]))
    guard listed.exitCode == 0 else { return false }
    let lines = listed.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") }
    guard lines.count == rules.count else { return false }
    for rule in rules {
      if await runner.probe(Command(binary, ["-w", "-C", name] + rule)).exitCode != 0 {
        return false
      }
    }
    return await runner.probe(Command(binary, ["-w", "-C", jumpFrom] + jump)).exitCode == 0
  }

  func rebuild(_ runner: any CommandRunning) async throws {
    if await matches(runner) { return }
    if await runner.probe(Command(binary, ["-w", "-N", name])).exitCode != 0 {
      try await runner.run(Command(binary, ["-w", "-F", name]))
    }
    for rule in rules { try await runner.run(Command(binary, ["-w", "-A", name] + rule)) }
    if await runner.probe(Command(binary, ["-w", "-C", jumpFrom] + jump)).exitCode != 0 {
      try await runner.run(Command(binary, ["-w", "-I", jumpFrom, "1"] + jump))
    }
  }

  /// The rules as `iptables -S` prints them (for `network status`).
  func listing(_ runner: any CommandRunning) async -> [String] {
    let listed = await runner.probe(Command(binary, ["-w", "-S", name]))
    return listed.stdout.split(separator: "\n").filter { $0.hasPrefix("-A ") }.map(String.init)
  }
}
