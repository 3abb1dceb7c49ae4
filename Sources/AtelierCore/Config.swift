import Foundation

/// Manager and CLI settings. Precedence: environment (`ATELIER_*`) > the JSON file named by
/// `ATELIER_CONFIG` > defaults. Every key has a dotted path in the file (`server.port`) and an
/// environment name derived from it (`ATELIER_SERVER_PORT`).
public struct Config: Sendable, Equatable {
  public enum Accel: String, Sendable, CaseIterable { case auto, kvm, tcg }
  public enum VMMKind: String, Sendable, CaseIterable { case qemu, firecracker }
  public enum StorageKind: String, Sendable, CaseIterable { case file, lvm }
  public enum NetworkKind: String, Sendable, CaseIterable { case user, bridge }
  /// Whether QEMU guests get a vsock for the agent: `auto` when `/dev/vhost-vsock` is usable.
  public enum QEMUVsock: String, Sendable, CaseIterable { case auto, on, off }

  public var dataDir: String
  public var serverHost: String
  public var serverPort: Int
  public var maxSandboxes: Int
  public var accel: Accel
  public var vmm: VMMKind
  public var storage: StorageKind
  public var network: NetworkKind
  public var qemuBinary: String
  public var qemuVsock: QEMUVsock
  public var firecrackerBin: String
  /// The Firecracker jailer; empty runs Firecracker directly.
  public var firecrackerJailer: String
  /// The user a jailed Firecracker runs as (`atelier init` creates it).
  public var jailerUser: String
  /// The unprivileged user QEMU runs as when the manager is root (created when missing).
  public var vmUser: String
  /// TCG's translation cache per QEMU VM in MiB (0: QEMU's own default, up to 1 GiB).
  public var qemuTbSizeMb: Int
  /// The most one VM's console log files hold (older output is dropped).
  public var consoleLogBytes: Int
  /// Creates and snapshots are refused when the data folder's file system has less free space
  /// than this, in GiB (0: no floor).
  public var minFreeGb: Int
  /// Bridge networking: the bridge, its address (a /24), the first guest address.
  public var bridgeName: String
  public var bridgeIp: String
  public var guestIpStart: Int
  /// Host TCP ports guests on the bridge may reach (everything else on the host is closed
  /// to them: the manager API and SSH above all).
  public var bridgeAllowedPorts: [Int]
  /// DNS server written into guests on the bridge.
  public var guestDns: String
  /// Whether a sandbox created without `network.internet` has outbound network. By default
  /// only under a root manager, whose user-mode guests' egress is filtered (no host address);
  /// a manager that is not root cannot filter them, so they would reach the host's loopback.
  public var guestInternet = geteuid() == 0
  /// IPv4 networks no guest reaches unless its `network.allow` says so (the host's own
  /// addresses are refused whatever this says).
  public var egressDeny = EgressDefaults.deny
  public var lvmVg: String
  public var lvmPool: String
  /// Size a sandbox disk is grown to when its image is smaller (the guest grows its file
  /// system to fill it at boot); both volume stores.
  public var diskSizeGb: Int
  /// The guest agent binary put into images; empty means "next to the atelier binary".
  public var agentPath: String
  /// Where image recipes (`<name>/manifest.json`) are; empty means "find them"
  /// (`RecipeLocations`: next to the binary, its checkout, the installed share folders).
  public var recipesDir: String
  public var bootTimeoutSeconds: Int
  /// How often the reconciler compares the database with the host.
  public var reconcileIntervalSeconds: Int
  /// How often idle sandboxes are looked for.
  public var idleCheckSeconds: Int
  /// Comment lines on `/api/events` keep proxies from closing a quiet stream.
  public var eventsHeartbeatSeconds: Int
  public var defaultImage: String
  public var logLevel: String
  /// Host services every guest reaches as `host.atelier.internal:<guest port>`.
  public var guestServices: [GuestService]
  /// Guest-service connections one sandbox may have open at once (more are refused).
  public var maxTunnelsPerSandbox: Int
  /// The most a sandbox may ask for (within the absolute ranges of `CreateSandboxRequest`).
  public var maxVcpus = CreateSandboxRequest.vcpuRange.upperBound
  public var maxMemoryMb = CreateSandboxRequest.memoryRange.upperBound
  public var maxDiskGb = CreateSandboxRequest.diskRange.upperBound

  /// What a create may ask for here: the API document states the same ranges.
  public var limits: SandboxLimits {
    SandboxLimits(
      vcpus: CreateSandboxRequest.vcpuRange.lowerBound...maxVcpus,
      memoryMb: CreateSandboxRequest.memoryRange.lowerBound...maxMemoryMb,
      diskGb: CreateSandboxRequest.diskRange.lowerBound...maxDiskGb)
  }

  public static func defaults(environment: [String: String] = ProcessInfo.processInfo.environment)
    -> Config
  {
    let isRoot = getuid() == 0
    let home = environment["HOME"] ?? NSHomeDirectory()
    return Config(
      dataDir: isRoot ? "/var/lib/atelier" : "\(home)/.local/share/atelier",
      serverHost: "127.0.0.1", serverPort: 4000, maxSandboxes: 20, accel: .auto, vmm: .qemu,
      storage: .file, network: .user, qemuBinary: "qemu-system-x86_64", qemuVsock: .auto,
      firecrackerBin: "firecracker", firecrackerJailer: "", jailerUser: "atelier",
      vmUser: "atelier", qemuTbSizeMb: 32, consoleLogBytes: 1 << 20, minFreeGb: 2,
      bridgeName: "br0", bridgeIp: "172.16.0.1", guestIpStart: 10,
      bridgeAllowedPorts: [], guestDns: hostNameserver(), lvmVg: "sandbox-vg", lvmPool: "thin-pool",
      diskSizeGb: 10, agentPath: "", recipesDir: "",
      bootTimeoutSeconds: 90, reconcileIntervalSeconds: 30, idleCheckSeconds: 2,
      eventsHeartbeatSeconds: 15,
      defaultImage: "tiny", logLevel: "info", guestServices: [], maxTunnelsPerSandbox: 64)
  }

  /// A key as it appears in the file (`path`) and in the environment (`envName`).
  struct Key: Sendable {
    let path: String
    /// The environment name when it is not the one derived from `path`.
    var environment: String? = nil
    /// Other environment names that set this key (the canonical name wins when both are set).
    var aliases: [String] = []
    let apply: @Sendable (inout Config, String) throws -> Void
    var envName: String {
      if let environment { return environment }
      var name = "ATELIER_"
      for character in path {
        if character == "." {
          name.append("_")
        } else if character.isUppercase {
          name.append("_")
          name.append(character)
        } else {
          name.append(Character(character.uppercased()))
        }
      }
      return name
    }
  }

  static let keys: [Key] = [
    Key(path: "dataDir") { config, value in
      guard value.hasPrefix("/") else { throw ConfigProblem("expected an absolute path") }
      config.dataDir = value
    },
    Key(path: "server.host") { config, value in
      guard !value.isEmpty, !value.contains(" ") else { throw ConfigProblem("expected a host") }
      config.serverHost = value
    },
    Key(path: "server.port") { $0.serverPort = try integer($1, in: 1...65535) },
    Key(path: "server.maxSandboxes", aliases: ["ATELIER_MAX_SANDBOXES"]) {
      $0.maxSandboxes = try integer($1, in: 1...10000)
    },
    Key(path: "accel") { $0.accel = try choice($1) },
    Key(path: "vmm") { $0.vmm = try choice($1) },
    Key(path: "storage") { $0.storage = try choice($1) },
    Key(path: "network") { $0.network = try choice($1) },
    Key(path: "qemuBinary") { config, value in
      guard !value.isEmpty else { throw ConfigProblem("expected a program name or path") }
      config.qemuBinary = value
    },
    Key(path: "qemuVsock") { $0.qemuVsock = try choice($1) },
    Key(path: "firecrackerJailer") { $0.firecrackerJailer = $1 },
    Key(path: "jailerUser") { $0.jailerUser = try nonEmpty($1) },
    Key(path: "vmUser") { $0.vmUser = try nonEmpty($1) },
    Key(path: "qemuTbSizeMb") { $0.qemuTbSizeMb = try integer($1, in: 0...4096) },
    Key(path: "consoleLogBytes") {
      $0.consoleLogBytes = try integer($1, in: (64 << 10)...(1 << 30))
    },
    Key(path: "minFreeGb") { $0.minFreeGb = try integer($1, in: 0...100_000) },
    Key(path: "firecrackerBin") { config, value in
      guard !value.isEmpty else { throw ConfigProblem("expected a program name or path") }
      config.firecrackerBin = value
    },
    Key(path: "bridgeName") { config, value in
      guard (1...15).contains(value.count),
        value.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" })
      else {
        throw ConfigProblem("expected an interface name of 1–15 letters, digits or -")
      }
      config.bridgeName = value
    },
    Key(path: "bridgeIp") { config, value in
      let parts = value.split(separator: ".").compactMap { Int($0) }
      guard parts.count == 4, parts.allSatisfy({ (0...255).contains($0) }), parts[3] != 0,
        parts[3] != 255
      else {
        throw ConfigProblem("expected an IPv4 address such as 172.16.0.1 (its /24 is the guests')")
      }
      config.bridgeIp = value
    },
    Key(path: "guestIpStart") { $0.guestIpStart = try integer($1, in: 2...250) },
    Key(path: "bridgeAllowedPorts") { config, value in
      let ports = value.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "[" || $0 == "]" })
      config.bridgeAllowedPorts = try ports.map { try integer(String($0), in: 1...65535) }
    },
    Key(path: "guestInternet") { $0.guestInternet = try boolean($1) },
    Key(path: "egressDeny") { config, value in
      let entries = value.split(whereSeparator: { ", []".contains($0) }).map(String.init)
      config.egressDeny = try entries.map { entry in
        guard let network = IPv4Network(entry) else {
          throw ConfigProblem(
            "\(entry) is not an IPv4 network (a.b.c.d/n); expected a comma-separated list")
        }
        return network.description
      }
    },
    Key(path: "guestDns") { config, value in
      guard value.split(separator: ".").count == 4 else {
        throw ConfigProblem("expected an IPv4 address")
      }
      config.guestDns = value
    },
    Key(path: "lvmVg") { $0.lvmVg = try nonEmpty($1) },
    Key(path: "lvmPool") { $0.lvmPool = try nonEmpty($1) },
    // The earlier name (LVM only), read first so that `diskSizeGb` wins when both are set.
    Key(path: "lvmVolumeSizeGb") {
      $0.diskSizeGb = try integer($1, in: CreateSandboxRequest.diskRange)
    },
    Key(path: "diskSizeGb") {
      $0.diskSizeGb = try integer($1, in: CreateSandboxRequest.diskRange)
    },
    Key(path: "limits.vcpus", environment: "ATELIER_MAX_VCPUS") {
      $0.maxVcpus = try integer($1, in: CreateSandboxRequest.vcpuRange)
    },
    Key(path: "limits.memoryMb", environment: "ATELIER_MAX_MEMORY_MB") {
      $0.maxMemoryMb = try integer($1, in: CreateSandboxRequest.memoryRange)
    },
    Key(path: "limits.diskGb", environment: "ATELIER_MAX_DISK_GB") {
      $0.maxDiskGb = try integer($1, in: CreateSandboxRequest.diskRange)
    },
    Key(path: "agentPath") { $0.agentPath = $1 },
    // The folder of image recipes; ATELIER_RECIPES_DIR is its earlier name.
    Key(path: "recipesDir", environment: "ATELIER_IMAGES_DIR", aliases: ["ATELIER_RECIPES_DIR"]) {
      $0.recipesDir = $1
    },
    Key(path: "bootTimeoutSeconds") { $0.bootTimeoutSeconds = try integer($1, in: 5...3600) },
    Key(path: "reconcileIntervalSeconds") {
      $0.reconcileIntervalSeconds = try integer($1, in: 1...86400)
    },
    Key(path: "idleCheckSeconds") { $0.idleCheckSeconds = try integer($1, in: 1...3600) },
    Key(path: "eventsHeartbeatSeconds") {
      $0.eventsHeartbeatSeconds = try integer($1, in: 1...3600)
    },
    Key(path: "defaultImage") { config, value in
      guard ImageName.isValid(value) else { throw ConfigProblem("expected an image name") }
      config.defaultImage = value
    },
    Key(path: "guestServices") { $0.guestServices = try GuestService.parseList($1) },
    Key(path: "maxTunnelsPerSandbox") { $0.maxTunnelsPerSandbox = try integer($1, in: 1...4096) },
    Key(path: "logLevel") { config, value in
      let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]
      guard levels.contains(value) else {
        throw ConfigProblem("expected one of \(levels.joined(separator: ", "))")
      }
      config.logLevel = value
    },
  ]

  /// Loads the configuration; throws `ConfigError` naming the offending key.
  public static func load(environment: [String: String] = ProcessInfo.processInfo.environment)
    throws -> Config
  {
    var config = Config.defaults(environment: environment)
    if let file = environment["ATELIER_CONFIG"], !file.isEmpty {
      let values = try readFile(file)
      for (path, _) in values where !keys.contains(where: { $0.path == path }) {
        throw ConfigError(key: path, source: file, message: "unknown key")
      }
      // In the order of `keys`, so a later key (a current name) wins over an earlier alias.
      for key in keys {
        for (path, value) in values where path == key.path {
          do { try key.apply(&config, value) } catch let problem as ConfigProblem {
            throw ConfigError(key: path, source: file, message: "\(value): \(problem.reason)")
          }
        }
      }
    }
    for key in keys {
      guard
        let name = ([key.envName] + key.aliases).first(where: { environment[$0] != nil }),
        let value = environment[name]
      else { continue }
      do { try key.apply(&config, value) } catch let problem as ConfigProblem {
        throw ConfigError(key: name, source: nil, message: "\(value): \(problem.reason)")
      }
    }
    return config
  }

  /// Reads the JSON config file into dotted paths with string values.
  static func readFile(_ path: String) throws -> [(String, String)] {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw ConfigError(key: "ATELIER_CONFIG", source: nil, message: "cannot read \(path)")
    }
    guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
      throw ConfigError(key: "ATELIER_CONFIG", source: nil, message: "\(path) is not a JSON object")
    }
    var result: [(String, String)] = []
    func flatten(_ object: [String: Any], prefix: String) {
      for (key, value) in object.sorted(by: { $0.key < $1.key }) {
        let path = prefix.isEmpty ? key : "\(prefix).\(key)"
        if let nested = value as? [String: Any] {
          flatten(nested, prefix: path)
        } else if let list = value as? [Any] {
          result.append((path, list.map { "\($0)" }.joined(separator: ",")))
        } else if let number = value as? NSNumber, !(value is Bool) {
          result.append((path, number.stringValue))
        } else {
          result.append((path, "\(value)"))
        }
      }
    }
    flatten(object, prefix: "")
    return result
  }

  static func nonEmpty(_ value: String) throws -> String {
    guard !value.isEmpty, !value.contains(" "), !value.contains("/") else {
      throw ConfigProblem("expected a name")
    }
    return value
  }

  /// The first non-loopback nameserver of this host, for guests on the bridge.
  static func hostNameserver() -> String {
    let text = (try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8)) ?? ""
    for line in text.split(separator: "\n") {
      let words = line.split(separator: " ")
      if words.count >= 2, words[0] == "nameserver", !words[1].hasPrefix("127."),
        words[1].contains(".")
      {
        return String(words[1])
      }
    }
    return "1.1.1.1"
  }

  static func integer(_ value: String, in range: ClosedRange<Int>) throws -> Int {
    guard let number = Int(value), range.contains(number) else {
      throw ConfigProblem("expected a whole number from \(range.lowerBound) to \(range.upperBound)")
    }
    return number
  }

  static func boolean(_ value: String) throws -> Bool {
    switch value.lowercased() {
    case "true", "1", "yes", "on": return true
    case "false", "0", "no", "off": return false
    default: throw ConfigProblem("expected true or false")
    }
  }

  static func choice<T: RawRepresentable & CaseIterable>(_ value: String) throws -> T
  where T.RawValue == String {
    guard let parsed = T(rawValue: value) else {
      throw ConfigProblem("expected one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    return parsed
  }

  // MARK: Paths inside the data folder

  public var databasePath: String { "\(dataDir)/atelier.db" }
  public var adminTokenPath: String { "\(dataDir)/admin-token" }
  public var imagesDir: String { "\(dataDir)/images" }
  public var kernelsDir: String { "\(dataDir)/kernels" }
  public var sandboxesDir: String { "\(dataDir)/sandboxes" }
  public var logsDir: String { "\(dataDir)/logs" }
  public var cacheDir: String { "\(dataDir)/cache" }
  public var snapshotsDir: String { "\(dataDir)/snapshots" }
  public var managerURL: String {
    let host = serverHost == "0.0.0.0" ? "127.0.0.1" : serverHost
    return "http://\(host):\(serverPort)"
  }
}

struct ConfigProblem: Error {
  let reason: String
  init(_ reason: String) { self.reason = reason }
}

/// An invalid setting; its description is the one-line message shown at start.
public struct ConfigError: Error, CustomStringConvertible, Sendable {
  public let key: String
  public let source: String?
  public let message: String
  public init(key: String, source: String?, message: String) {
    self.key = key
    self.source = source
    self.message = message
  }
  public var description: String {
    if let source { return "invalid config \(key) in \(source): \(message)" }
    return "invalid config \(key): \(message)"
  }
}
