import AtelierAgentAPI

/// `network` in a create, restore or fork request: what the guest may reach. A field left out
/// keeps what the sandbox restored or forked from had (or the default, for a new sandbox).
public struct NetworkPolicyRequest: Codable, Sendable, Equatable {
  /// Outbound network at all (default `ATELIER_GUEST_INTERNET`). `false`: nothing but the host
  /// services listed for guests (`host.atelier.internal`, tunnelled by the agent).
  public var internet: Bool?
  /// IPv4 networks reached even when `deny` or the host's default deny list covers them
  /// (checked first). Bridge networking only.
  public var allow: [String]?
  /// IPv4 networks refused, on top of the host's default deny list (`ATELIER_EGRESS_DENY`).
  /// Bridge networking only.
  public var deny: [String]?

  public init(internet: Bool? = nil, allow: [String]? = nil, deny: [String]? = nil) {
    self.internet = internet
    self.allow = allow
    self.deny = deny
  }
}

/// A sandbox's egress policy, as kept with it and shown in its JSON. The host's default deny
/// list (`ATELIER_EGRESS_DENY`) and its own addresses come on top; they are the host's policy,
/// not the sandbox's, so they are not repeated here.
public struct NetworkPolicy: Codable, Sendable, Equatable {
  public var internet: Bool
  /// Normalized networks (`a.b.c.d/n`, host bits cleared), in the order given.
  public var allow: [String]
  public var deny: [String]

  public init(internet: Bool, allow: [String] = [], deny: [String] = []) {
    self.internet = internet
    self.allow = allow
    self.deny = deny
  }

  /// Entries per list, at most: each is a firewall rule on the host.
  public static let maxEntries = 64

  /// The policy a request asks for on top of `base` (the default or what a restore inherits):
  /// fields given replace the base's. Throws a 400 naming the field of a bad entry.
  public static func resolve(_ request: NetworkPolicyRequest?, over base: NetworkPolicy) throws
    -> NetworkPolicy
  {
    guard let request else { return base }
    return NetworkPolicy(
      internet: request.internet ?? base.internet,
      allow: try request.allow.map { try normalize($0, field: "network.allow") } ?? base.allow,
      deny: try request.deny.map { try normalize($0, field: "network.deny") } ?? base.deny)
  }

  static func normalize(_ entries: [String], field: String) throws -> [String] {
    guard entries.count <= maxEntries else {
      throw AtelierError.validation("\(field) takes at most \(maxEntries) entries")
    }
    return try entries.enumerated().map { index, entry in
      guard let network = IPv4Network(entry) else {
        throw AtelierError.validation(
          "\(field)[\(index)]: \(entry) is not an IPv4 network (a.b.c.d or a.b.c.d/n, n 0–32)")
      }
      return network.description
    }
  }
}

/// An IPv4 network, `a.b.c.d/n`. Guests have no IPv6 (the bridge has none; user-mode
/// networking runs with `ipv6=off`), so the firewall and the policy are IPv4 only.
public struct IPv4Network: Sendable, Hashable, CustomStringConvertible {
  /// The network address, host bits cleared.
  public var address: UInt32
  public var prefixLength: Int

  /// What the API accepts (the validator is the parser below; this is for the document).
  /// Exactly what `init?(_:)` takes: octets 0–255 without leading zeros, a prefix of one or
  /// two digits up to 32.
  public static let pattern =
    #"^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])\.){3}"#
    + #"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])(/(3[0-2]|[12][0-9]|0?[0-9]))?$"#

  public init?(_ text: String) {
    let parts = text.split(separator: "/", omittingEmptySubsequences: false)
    guard (1...2).contains(parts.count), let address = Self.parseAddress(parts[0]) else {
      return nil
    }
    var prefix = 32
    if parts.count == 2 {
      guard !parts[1].isEmpty, parts[1].count <= 2, parts[1].allSatisfy(\.isASCII),
        let value = Int(parts[1]), (0...32).contains(value)
      else { return nil }
      prefix = value
    }
    self.prefixLength = prefix
    self.address = address & Self.mask(prefix)
  }

  /// Dotted quad: four decimal numbers 0–255, no signs, no leading zeros beyond "0".
  public static func parseAddress(_ text: Substring) -> UInt32? {
    let octets = text.split(separator: ".", omittingEmptySubsequences: false)
    guard octets.count == 4 else { return nil }
    var value: UInt32 = 0
    for octet in octets {
      guard (1...3).contains(octet.count), octet.allSatisfy({ $0.isASCII && $0.isNumber }),
        octet.count == 1 || octet.first != "0", let number = UInt32(octet), number <= 255
      else { return nil }
      value = value << 8 | number
    }
    return value
  }

  static func mask(_ prefix: Int) -> UInt32 {
    prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix)
  }

  public func contains(_ other: UInt32) -> Bool { other & Self.mask(prefixLength) == address }

  public var description: String {
    let octets = [24, 16, 8, 0].map { String((address >> UInt32($0)) & 0xff) }
    return octets.joined(separator: ".") + "/\(prefixLength)"
  }
}

/// The host's default egress policy, on top of every sandbox's own.
public enum EgressDefaults {
  /// `ATELIER_EGRESS_DENY`'s default: private ranges (RFC 1918), CGNAT (RFC 6598), link-local
  /// (cloud metadata answers at 169.254.169.254), loopback and "this network" (0.0.0.0/8, which
  /// a connect turns into the host itself). The host's own addresses are refused in every
  /// mode whatever this list says (by the firewall's `addrtype LOCAL` match in user mode, by
  /// the bridge's INPUT chain), and link-local on the bridge even when allowed.
  public static let deny = [
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "0.0.0.0/8",
  ]
}
