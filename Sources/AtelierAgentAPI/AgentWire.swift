/// Wire types shared by the manager and the in-guest agent (HTTP/1.1 + JSON).
/// Kept free of Foundation so the agent links only what it needs.

public enum AgentProtocol {
  /// The guest TCP (and vsock) port the agent listens on.
  public static let port = 9998
  public static let defaultOutputLimit = 10 << 20
}

public struct AgentHealth: Codable, Sendable, Equatable {
  public var status: String
  public var sandboxId: String
  public var hostname: String?
  /// Seconds since the agent started.
  public var uptime: Double
  public init(status: String, sandboxId: String, hostname: String?, uptime: Double) {
    self.status = status
    self.sandboxId = sandboxId
    self.hostname = hostname
    self.uptime = uptime
  }
}

/// `POST /exec`: exactly one of `command` (run by `/bin/sh -c`) or `argv` (run directly).
public struct ExecRequest: Codable, Sendable, Equatable {
  public var command: String?
  public var argv: [String]?
  public var env: [String: String]?
  public var cwd: String?
  public var timeoutMs: Int?
  /// `dev` by default where that user exists, else `root`.
  public var user: String?
  /// Text written to the command's standard input, which is then closed.
  public var stdin: String?

  public init(
    command: String? = nil, argv: [String]? = nil, env: [String: String]? = nil,
    cwd: String? = nil, timeoutMs: Int? = nil, user: String? = nil, stdin: String? = nil
  ) {
    self.command = command
    self.argv = argv
    self.env = env
    self.cwd = cwd
    self.timeoutMs = timeoutMs
    self.user = user
    self.stdin = stdin
  }

  /// A command's time limit in milliseconds (a day at most).
  public static let timeoutRange = 1...86_400_000

  /// A problem with the request, or nil when it can run.
  public var validationProblem: String? {
    switch (command, argv) {
    case (nil, nil): return "one of command or argv is required"
    case (.some, .some): return "give command or argv, not both"
    case (.some(let command), nil) where command.isEmpty: return "command is empty"
    case (nil, .some(let argv)) where argv.isEmpty || argv[0].isEmpty: return "argv is empty"
    default: break
    }
    if let timeoutMs, !Self.timeoutRange.contains(timeoutMs) {
      return
        "timeoutMs must be between \(Self.timeoutRange.lowerBound) and \(Self.timeoutRange.upperBound)"
    }
    return nil
  }
}

public struct ExecResult: Codable, Sendable, Equatable {
  public var exitCode: Int32
  public var stdout: String
  public var stderr: String
  public var durationMs: Int
  /// Output beyond the agent's limit was dropped.
  public var truncated: Bool
  /// The command ran past `timeoutMs`; its process group was killed.
  public var timedOut: Bool

  public init(
    exitCode: Int32, stdout: String, stderr: String, durationMs: Int, truncated: Bool,
    timedOut: Bool
  ) {
    self.exitCode = exitCode
    self.stdout = stdout
    self.stderr = stderr
    self.durationMs = durationMs
    self.truncated = truncated
    self.timedOut = timedOut
  }
}

/// What the manager tells a guest at boot through the kernel command line
/// (`atelier.id=… atelier.hostname=… atelier.ip=10.0.2.15/24 atelier.gw=… atelier.dns=…`).
public struct GuestBootParameters: Sendable, Equatable {
  public var sandboxId: String
  public var hostname: String
  /// `address/prefix` for eth0, or nil to leave it unconfigured.
  public var ipv4: String?
  public var gateway: String?
  public var dns: String?
  /// The agent's private channel when it is not eth0: `eth1:10.0.3.15/24`.
  public var agentInterface: String?
  /// The address the agent's TCP listener binds (default all; only the private channel's
  /// address when the guest also sits on a shared network).
  public var listen: String?
  /// Also accept the agent protocol on this AF_VSOCK port (Firecracker).
  public var vsockPort: Int?

  public init(
    sandboxId: String, hostname: String, ipv4: String? = nil, gateway: String? = nil,
    dns: String? = nil, agentInterface: String? = nil, listen: String? = nil, vsockPort: Int? = nil
  ) {
    self.sandboxId = sandboxId
    self.hostname = hostname
    self.ipv4 = ipv4
    self.gateway = gateway
    self.dns = dns
    self.agentInterface = agentInterface
    self.listen = listen
    self.vsockPort = vsockPort
  }

  public var kernelArguments: [String] {
    var arguments = ["atelier.id=\(sandboxId)", "atelier.hostname=\(hostname)"]
    if let ipv4 { arguments.append("atelier.ip=\(ipv4)") }
    if let gateway { arguments.append("atelier.gw=\(gateway)") }
    if let dns { arguments.append("atelier.dns=\(dns)") }
    if let agentInterface { arguments.append("atelier.agentif=\(agentInterface)") }
    if let listen { arguments.append("atelier.listen=\(listen)") }
    if let vsockPort { arguments.append("atelier.vsock=\(vsockPort)") }
    return arguments
  }

  public init?(commandLine: String) {
    var values: [Substring: Substring] = [:]
    for word in commandLine.split(whereSeparator: { $0 == " " || $0 == "\n" }) {
      guard word.hasPrefix("atelier."), let equals = word.firstIndex(of: "=") else { continue }
      values[word[word.index(word.startIndex, offsetBy: 8)..<equals]] =
        word[word.index(after: equals)...]
    }
    guard let id = values["id"] else { return nil }
    self.init(
      sandboxId: String(id), hostname: String(values["hostname"] ?? id),
      ipv4: values["ip"].map(String.init), gateway: values["gw"].map(String.init),
      dns: values["dns"].map(String.init), agentInterface: values["agentif"].map(String.init),
      listen: values["listen"].map(String.init), vsockPort: values["vsock"].flatMap { Int($0) })
  }
}

/// `POST /system/resume`: sent after a restore or a resume. Sets the wall clock, mixes fresh
/// entropy into the kernel, and (after a restore) gives the guest its new identity.
public struct GuestResumeRequest: Codable, Sendable, Equatable {
  public var unixTimeNanos: Int64
  /// Base64 random bytes from the host.
  public var entropy: String?
  public var sandboxId: String?
  public var hostname: String?
  /// A restore onto a shared network gets its own address and MAC on eth0.
  public var ipv4: String?
  public var gateway: String?
  public var mac: String?

  public init(
    unixTimeNanos: Int64, entropy: String? = nil, sandboxId: String? = nil, hostname: String? = nil,
    ipv4: String? = nil, gateway: String? = nil, mac: String? = nil
  ) {
    self.unixTimeNanos = unixTimeNanos
    self.entropy = entropy
    self.sandboxId = sandboxId
    self.hostname = hostname
    self.ipv4 = ipv4
    self.gateway = gateway
    self.mac = mac
  }
}
