import AtelierCore
import AtelierProcess
import Foundation
import Testing

/// A second namespace standing in for the internet, linked to a manager's namespace by a veth
/// pair (the manager's only way out): servers that say who they are on a "public" address
/// (203.0.113.1), on a second one a deny list can name (198.51.100.1), on a private one the
/// default deny list covers (10.99.0.1) and on the cloud metadata address (169.254.169.254).
/// Nothing in it routes further, so nothing a guest does leaves the machine.
final class TestInternet: @unchecked Sendable {
  static let publicServer = "203.0.113.1"
  static let otherServer = "198.51.100.1"
  static let privateServer = "10.99.0.1"
  static let metadataServer = "169.254.169.254"
  /// A DNS server on a private address (the default deny list covers it): guests on the bridge
  /// still resolve through it when it is the configured one. It answers every A query with
  /// `resolvedAddress`.
  static let resolver = "10.99.0.53"
  static let resolvedAddress = "192.0.2.53"
  /// The manager namespace's own address on the link (an address of "the host").
  static let hostAddress = "203.0.113.2"
  static let port = 8080
  static let banner = "internet-ok"

  let namespace: String
  let host: NamespacedManager
  private var servers: [Int32] = []

  /// Links `host`'s namespace (before its manager starts, so passt or slirp see the route).
  init(linkedTo host: NamespacedManager) async throws {
    self.host = host
    namespace = host.namespace + "i"
    let outside = "\(host.namespace)o"
    let inside = "\(host.namespace)h"
    try await host.run(["ip", "netns", "add", namespace])
    try await run(["ip", "link", "set", "lo", "up"])
    try await host.run([
      "ip", "link", "add", inside, "netns", host.namespace, "type", "veth", "peer", "name",
      outside, "netns", namespace,
    ])
    for address in [
      "\(Self.publicServer)/24", "\(Self.otherServer)/24", "\(Self.privateServer)/16",
      "\(Self.metadataServer)/16", "\(Self.resolver)/16",
    ] {
      try await run(["ip", "addr", "add", address, "dev", outside])
    }
    try await run(["ip", "link", "set", outside, "up"])
    try await host.inside(["ip", "addr", "add", "\(Self.hostAddress)/24", "dev", inside])
    try await host.inside(["ip", "link", "set", inside, "up"])
    try await host.inside(["ip", "route", "add", "default", "via", Self.publicServer])
    // On-link in the internet namespace; routed there from the host's.
    try await host.inside(["ip", "route", "add", "169.254.0.0/16", "via", Self.publicServer])
    for (address, port) in [
      (Self.publicServer, Self.port), (Self.otherServer, Self.port),
      (Self.privateServer, Self.port), (Self.metadataServer, 80),
    ] {
      servers.append(
        try spawnBanner(address: address, port: port, banner: "\(Self.banner) \(address)"))
    }
    servers.append(
      try ProcessReaper.shared.spawn(
        SpawnOptions(
          executable: "/usr/sbin/ip",
          arguments: [
            "netns", "exec", namespace, "python3", "-c", Self.dnsServer, Self.resolver,
            Self.resolvedAddress,
          ],
          environment: ProcessInfo.processInfo.environment)))
    try await waitForListeners(in: namespace, count: 4)
  }

  static let dnsServer = """
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 53))
    address = socket.inet_aton(sys.argv[2])
    while True:
        query, peer = s.recvfrom(512)
        end = 12
        while end < len(query) and query[end] != 0: end += query[end] + 1
        question = query[12:end + 5]
        is_a = question[-4:-2] == struct.pack("!H", 1)
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + address if is_a else b""
        header = query[:2] + struct.pack("!HHHHH", 0x8180, 1, int(is_a), 0, 0)
        s.sendto(header + question + answer, peer)
    """

  @discardableResult
  func run(_ arguments: [String]) async throws -> RunResult {
    let result = try await host.run(["ip", "netns", "exec", namespace] + arguments)
    guard result.exitCode == 0 else {
      throw TestFailure("\(arguments.joined(separator: " ")) failed: \(result.stderrText)")
    }
    return result
  }

  /// A TCP server answering every connection with one line, then closing it.
  func spawnBanner(address: String, port: Int, banner: String, in namespace: String? = nil)
    throws -> Int32
  {
    try ProcessReaper.shared.spawn(
      SpawnOptions(
        executable: "/usr/sbin/ip",
        arguments: [
          "netns", "exec", namespace ?? self.namespace, "python3", "-c", Self.bannerServer,
          address, String(port), banner,
        ],
        environment: ProcessInfo.processInfo.environment))
  }

  static let bannerServer = """
    import socket, sys, threading
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(64)
    def answer(c):
        try:
            c.sendall((sys.argv[3] + "\\n").encode()); c.shutdown(socket.SHUT_WR); c.recv(4096)
        except OSError: pass
        c.close()
    while True:
        c, _ = s.accept(); threading.Thread(target=answer, args=(c,), daemon=True).start()
    """

  func waitForListeners(in namespace: String, count: Int) async throws {
    for _ in 0..<100 {
      if await TestNetwork.listeningPorts(namespace: namespace, runner: host).count >= count {
        return
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    throw TestFailure("the servers in \(namespace) did not start")
  }

  func tearDown() async {
    for server in servers { kill(server, SIGKILL) }
    _ = try? await host.run(["ip", "netns", "del", namespace])
  }
}

/// What one connection attempt from a guest gave.
enum ProbeResult: Equatable, CustomStringConvertible {
  /// Connected (and maybe read something).
  case reached(String)
  /// The connection failed the way a refused, dropped or unroutable one does.
  case unreachable(String)

  var reached: Bool { if case .reached = self { true } else { false } }
  /// Reached, and what came back starts with `banner`.
  func reached(saying banner: String) -> Bool {
    if case .reached(let text) = self { text.hasPrefix(banner) } else { false }
  }
  var description: String {
    switch self {
    case .reached(let text): "reached (\(text))"
    case .unreachable(let text): "unreachable (\(text))"
    }
  }
}

enum TestNetwork {
  /// TCP ports something listens on in `namespace` (IPv4 and IPv6; from /proc/net/tcp*, read
  /// inside it now).
  static func listeningPorts(namespace: String, runner: NamespacedManager) async -> Set<Int> {
    var ports = Set<Int>()
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
      guard let result = try? await runner.run(["ip", "netns", "exec", namespace, "cat", table])
      else { continue }
      for line in result.stdoutText.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 3, fields[3] == "0A", let colon = fields[1].lastIndex(of: ":"),
          let port = Int(fields[1][fields[1].index(after: colon)...], radix: 16)
        else { continue }
        ports.insert(port)
      }
    }
    return ports
  }

  /// Tries every target from inside the guest at once (each a TCP connect sending a request
  /// line, `nc` under `timeout`). Connected, or cut off while connected, counts as reached; only
  /// the messages of a failed connect count as unreachable; anything else (a crash, a missing
  /// tool) fails the test, never counts as unreachable.
  static func probe(_ manager: NamespacedManager, _ id: String, _ targets: [(String, Int)])
    async throws -> [String: ProbeResult]
  {
    var script = "cd /tmp && rm -rf probes && mkdir probes && cd probes\n"
    for (index, (host, port)) in targets.enumerated() {
      script += """
        (printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 12 nc -w 4 \(host) \(port) > o\(index) 2>&1; \
        echo $? > r\(index)) &

        """
    }
    script += "wait\n"
    for index in targets.indices {
      script += "echo \"@@\(index) $(cat r\(index)) $(head -c 80 o\(index) | tr '\\n\\r' '  ')\"\n"
    }
    let output = try await manager.exec(id, script)
    var results: [String: ProbeResult] = [:]
    for line in output.stdout.split(separator: "\n") where line.hasPrefix("@@") {
      let words = line.dropFirst(2).split(separator: " ", maxSplits: 2).map(String.init)
      guard words.count >= 2, let index = Int(words[0]), let code = Int(words[1]),
        targets.indices.contains(index)
      else { throw TestFailure("unreadable probe line: \(line)") }
      let text = words.count > 2 ? words[2] : ""
      let key = "\(targets[index].0):\(targets[index].1)"
      results[key] = try classify(code: code, text: text, target: key)
    }
    guard results.count == targets.count else {
      throw TestFailure("the probes in \(id) did not all report:\n\(output.stdout)")
    }
    return results
  }

  static func classify(code: Int, text: String, target: String) throws -> ProbeResult {
    // A reset after connecting is not here: that connection was made.
    let failures = [
      "Connection refused", "timed out", "No route to host", "Network is unreachable",
    ]
    switch code {
    case 0, 124, 143: return .reached(text)
    case 1 where failures.contains(where: text.contains): return .unreachable(text)
    default: throw TestFailure("the probe of \(target) failed (exit \(code)): \(text)")
    }
  }
}
