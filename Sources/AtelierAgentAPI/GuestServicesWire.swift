/// Host services that guests reach as `host.atelier.internal:<port>`, through tunnels the
/// manager opens to the agent (see `AgentOperations`, `/guest-services/tunnel`).

public enum GuestServices {
  /// The name guests use, and the guest address it resolves to (the agent listens there).
  public static let hostName = "host.atelier.internal"
  public static let guestAddress = "127.0.0.2"
  public static let maxTunnelsRange = 1...4096
}

/// `PUT /system/guest-services`: the guest ports the agent listens on (replacing any before),
/// and how many tunnels may be in use at once (connections beyond are refused).
public struct GuestServicesRequest: Codable, Sendable, Equatable {
  public var ports: [Int]
  public var maxTunnels: Int
  public init(ports: [Int], maxTunnels: Int) {
    self.ports = ports
    self.maxTunnels = maxTunnels
  }
}

public struct GuestServicesStatus: Codable, Sendable, Equatable {
  /// The guest ports listened on now.
  public var ports: [Int]
  public var maxTunnels: Int
  /// Tunnels carrying a connection, and tunnels waiting for one.
  public var activeTunnels: Int
  public var idleTunnels: Int
  /// Guest connections refused so far (no tunnel, or the limit reached).
  public var refused: Int
  public init(ports: [Int], maxTunnels: Int, activeTunnels: Int, idleTunnels: Int, refused: Int) {
    self.ports = ports
    self.maxTunnels = maxTunnels
    self.activeTunnels = activeTunnels
    self.idleTunnels = idleTunnels
    self.refused = refused
  }
}

/// Control frames on a tunnel (JSON text; the bytes themselves are binary frames).
/// Agent → manager `open` (a guest process connected to `port`). Either way `eof`: nothing
/// more from this side (half-close). The manager closes the WebSocket once both directions
/// ended; either side closes it at once on an error.
public struct TunnelFrame: Codable, Sendable, Equatable {
  public enum Kind: String, Codable, Sendable { case open, eof }
  public var type: Kind
  public var port: Int?
  public init(type: Kind, port: Int? = nil) {
    self.type = type
    self.port = port
  }
}
