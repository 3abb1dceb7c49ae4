/// A host service every guest may reach as `host.atelier.internal:<guestPort>`
/// (`ATELIER_GUEST_SERVICES`, e.g. `9418=127.0.0.1:9418`). The manager connects to
/// `hostAddress:hostPort` and to nothing else on a guest's behalf.
public struct GuestService: Sendable, Equatable, Codable {
  public var guestPort: Int
  /// An IPv4 address, or an IPv6 one (written in brackets in the setting).
  public var hostAddress: String
  public var hostPort: Int

  public init(guestPort: Int, hostAddress: String, hostPort: Int) {
    self.guestPort = guestPort
    self.hostAddress = hostAddress
    self.hostPort = hostPort
  }

  /// `GUEST=ADDRESS:PORT[,…]`; an empty text is no services.
  static func parseList(_ text: String) throws -> [GuestService] {
    var services: [GuestService] = []
    let entries = text.split(whereSeparator: { $0 == "," || $0 == " " })
    for raw in entries where !raw.isEmpty {
      let entry = String(raw)
      guard let equals = entry.firstIndex(of: "="),
        let guestPort = Int(entry[..<equals]), (1...65535).contains(guestPort)
      else {
        throw ConfigProblem("expected GUEST_PORT=HOST_ADDRESS:PORT entries (got \(entry))")
      }
      let target = entry[entry.index(after: equals)...]
      guard let colon = target.lastIndex(of: ":"),
        let hostPort = Int(target[target.index(after: colon)...]), (1...65535).contains(hostPort)
      else { throw ConfigProblem("\(entry): expected a host address and port after =") }
      var address = String(target[..<colon])
      if address.hasPrefix("[") && address.hasSuffix("]") {
        address = String(address.dropFirst().dropLast())
        guard isIPv6(address) else { throw ConfigProblem("\(entry): not an IPv6 address") }
      } else {
        guard isIPv4(address) else {
          throw ConfigProblem("\(entry): the host address must be an IPv4 address or [IPv6]")
        }
      }
      guard !services.contains(where: { $0.guestPort == guestPort }) else {
        throw ConfigProblem("guest port \(guestPort) is given twice")
      }
      services.append(GuestService(guestPort: guestPort, hostAddress: address, hostPort: hostPort))
    }
    return services
  }

  static func isIPv4(_ text: String) -> Bool {
    let parts = text.split(separator: ".", omittingEmptySubsequences: false)
    return parts.count == 4
      && parts.allSatisfy { part in
        !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isNumber)
          && Int(part).map { $0 <= 255 } == true
      }
  }

  static func isIPv6(_ text: String) -> Bool {
    !text.isEmpty && text.contains(":")
      && text.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
  }
}
