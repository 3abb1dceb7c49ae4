import Dispatch
import Foundation

#if canImport(Glibc)
  import Glibc
#endif

// Firecracker's REST API (swagger: src/firecracker/swagger/firecracker.yaml), spoken as plain
// HTTP/1.1 over the Unix socket given to `firecracker --api-sock`.

/// A Firecracker API call that failed: an answer outside 2xx (with Firecracker's
/// `fault_message`), or no answer at all (`status == nil`).
public struct FirecrackerAPIError: Error, CustomStringConvertible, Sendable {
  public var method: String
  public var path: String
  public var status: Int?
  public var faultMessage: String

  public init(method: String, path: String, status: Int?, faultMessage: String) {
    self.method = method
    self.path = path
    self.status = status
    self.faultMessage = faultMessage
  }

  public var description: String {
    "firecracker \(method) \(path): \(status.map { "\($0) " } ?? "")\(faultMessage)"
  }
}

/// One answer of the API.
public struct FirecrackerResponse: Sendable {
  public var status: Int
  public var body: Data
}

/// A minimal HTTP/1.1 client for Firecracker's API socket. Each call opens a connection, sends
/// one request and closes (the API serves one request at a time anyway, and the manager sends
/// few). Blocking socket I/O runs on Dispatch, off the cooperative pool.
public struct FirecrackerAPI: Sendable {
  public enum Method: String, Sendable { case GET, PUT, PATCH }

  public let socketPath: String
  public let timeout: Duration

  public init(socketPath: String, timeout: Duration = .seconds(30)) {
    self.socketPath = socketPath
    self.timeout = timeout
  }

  /// Sends one request; a status outside 2xx throws `FirecrackerAPIError` with the fault message.
  @discardableResult
  public func send(_ method: Method, _ path: String, body: Data? = nil, timeout: Duration? = nil)
    async throws -> FirecrackerResponse
  {
    let request = Self.encodeRequest(method, path, body: body)
    let socketPath = socketPath
    let seconds = max(1, Int((timeout ?? self.timeout).components.seconds))
    let result = await withCheckedContinuation { continuation in
      DispatchQueue.global().async {
        continuation.resume(
          returning: Self.roundTrip(socketPath: socketPath, request: request, seconds: seconds))
      }
    }
    let response: FirecrackerResponse
    switch result {
    case .success(let answer): response = answer
    case .failure(let failure):
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: nil, faultMessage: failure.message)
    }
    guard (200..<300).contains(response.status) else {
      let fault = try? JSONDecoder().decode(FirecrackerFault.self, from: response.body)
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: response.status,
        faultMessage: fault?.faultMessage
          ?? String(decoding: response.body.prefix(500), as: UTF8.self))
    }
    return response
  }

  public func put(_ path: String, _ body: some Encodable, timeout: Duration? = nil) async throws {
    try await send(.PUT, path, body: Self.encode(body), timeout: timeout)
  }

  public func patch(_ path: String, _ body: some Encodable, timeout: Duration? = nil) async throws {
    try await send(.PATCH, path, body: Self.encode(body), timeout: timeout)
  }

  public func get<Result: Decodable>(_ path: String, as type: Result.Type) async throws -> Result {
    let response = try await send(.GET, path)
    return try JSONDecoder().decode(Result.self, from: response.body)
  }

  /// The Firecracker version (`GET /version`), e.g. "1.16.0".
  public func version() async throws -> String {
    try await get("/version", as: FirecrackerVersion.self).firecrackerVersion
  }

  /// Whether something accepts connections on the socket yet.
  public static func isListening(_ socketPath: String) -> Bool {
    guard let fd = try? UnixSocket.connect(socketPath) else { return false }
    close(fd)
    return true
  }

  static func encode(_ body: some Encodable) throws -> Data {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return try encoder.encode(body)
  }

  static func encodeRequest(_ method: Method, _ path: String, body: Data?) -> [UInt8] {
    var head =
      "\(method.rawValue) \(path) HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
    if let body {
      head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n"
    }
    head += "\r\n"
    return Array(head.utf8) + (body.map { [UInt8]($0) } ?? [])
  }

  struct TransportFailure: Error {
    var message: String
  }

  static func roundTrip(socketPath: String, request: [UInt8], seconds: Int)
    -> Result<FirecrackerResponse, TransportFailure>
  {
    let fd: Int32
    do {
      fd = try UnixSocket.connect(socketPath)
    } catch {
      return .failure(TransportFailure(message: "\(error)"))
    }
    defer { close(fd) }
    UnixSocket.setTimeouts(fd, seconds: seconds)
    guard UnixSocket.sendAll(fd, request) else {
      return .failure(TransportFailure(message: "write failed: \(UnixSocket.lastError())"))
    }
    return readResponse(fd).mapError { TransportFailure(message: $0.message) }
  }

  /// Reads one response: head, then exactly Content-Length bytes (Firecracker always sends it
  /// with a body; without it the body is empty, as for its 204s).
  static func readResponse(_ fd: Int32) -> Result<FirecrackerResponse, TransportFailure> {
    var buffer: [UInt8] = []
    let separator: [UInt8] = [13, 10, 13, 10]
    var headEnd: Int?
    while headEnd == nil {
      guard let chunk = UnixSocket.receive(fd), !chunk.isEmpty else {
        return .failure(TransportFailure(message: "connection closed before an answer"))
      }
      buffer += chunk
      headEnd = buffer.firstRange(of: separator)?.lowerBound
    }
    let head = String(decoding: buffer[..<headEnd!], as: UTF8.self)
    let lines = head.components(separatedBy: "\r\n")
    let statusParts = lines.first?.split(separator: " ") ?? []
    guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."),
      let status = Int(statusParts[1])
    else {
      return .failure(TransportFailure(message: "not an HTTP answer: \(lines.first ?? "")"))
    }
    var length = 0
    for line in lines.dropFirst() {
      guard let colon = line.firstIndex(of: ":") else { continue }
      if line[..<colon].trimmingCharacters(in: .whitespaces).lowercased() == "content-length" {
        length = Int(line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)) ?? 0
      }
    }
    var body = Array(buffer[(headEnd! + separator.count)...])
    while body.count < length {
      guard let chunk = UnixSocket.receive(fd), !chunk.isEmpty else {
        return .failure(TransportFailure(message: "connection closed in the middle of an answer"))
      }
      body += chunk
    }
    return .success(FirecrackerResponse(status: status, body: Data(body.prefix(length))))
  }
}

// MARK: - Request and answer bodies

/// `PUT /boot-source`.
public struct FirecrackerBootSource: Codable, Sendable, Equatable {
  public var kernelImagePath: String
  public var initrdPath: String?
  public var bootArgs: String
  enum CodingKeys: String, CodingKey {
    case kernelImagePath = "kernel_image_path"
    case initrdPath = "initrd_path"
    case bootArgs = "boot_args"
  }
}

/// `PUT /drives/{drive_id}`.
public struct FirecrackerDrive: Codable, Sendable, Equatable {
  public var driveId: String
  public var pathOnHost: String
  public var isRootDevice: Bool
  public var isReadOnly: Bool
  enum CodingKeys: String, CodingKey {
    case driveId = "drive_id"
    case pathOnHost = "path_on_host"
    case isRootDevice = "is_root_device"
    case isReadOnly = "is_read_only"
  }
}

/// `PUT /network-interfaces/{iface_id}`.
public struct FirecrackerNetworkInterface: Codable, Sendable, Equatable {
  public var ifaceId: String
  public var hostDevName: String
  public var guestMac: String?
  enum CodingKeys: String, CodingKey {
    case ifaceId = "iface_id"
    case hostDevName = "host_dev_name"
    case guestMac = "guest_mac"
  }
}

/// `PUT /machine-config`.
public struct FirecrackerMachineConfig: Codable, Sendable, Equatable {
  public var vcpuCount: Int
  public var memSizeMib: Int
  enum CodingKeys: String, CodingKey {
    case vcpuCount = "vcpu_count"
    case memSizeMib = "mem_size_mib"
  }
}

/// `PUT /vsock`.
public struct FirecrackerVsock: Codable, Sendable, Equatable {
  public var guestCid: Int
  public var udsPath: String
  enum CodingKeys: String, CodingKey {
    case guestCid = "guest_cid"
    case udsPath = "uds_path"
  }
}

/// `PUT /actions`.
public struct FirecrackerAction: Codable, Sendable, Equatable {
  public enum ActionType: String, Codable, Sendable {
    case instanceStart = "InstanceStart"
    case sendCtrlAltDel = "SendCtrlAltDel"
    case flushMetrics = "FlushMetrics"
  }
  public var actionType: ActionType
  enum CodingKeys: String, CodingKey { case actionType = "action_type" }
}

/// `PATCH /vm`.
public struct FirecrackerVMState: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable {
    case paused = "Paused"
    case resumed = "Resumed"
  }
  public var state: State
}

/// `PUT /snapshot/create`.
public struct FirecrackerSnapshotCreate: Codable, Sendable, Equatable {
  public enum SnapshotType: String, Codable, Sendable {
    case full = "Full"
    case diff = "Diff"
  }
  public var snapshotType: SnapshotType
  public var snapshotPath: String
  public var memFilePath: String
  enum CodingKeys: String, CodingKey {
    case snapshotType = "snapshot_type"
    case snapshotPath = "snapshot_path"
    case memFilePath = "mem_file_path"
  }
}

/// `PUT /snapshot/load`. Only accepted by a fresh Firecracker process.
public struct FirecrackerSnapshotLoad: Codable, Sendable, Equatable {
  public struct MemoryBackend: Codable, Sendable, Equatable {
    public enum BackendType: String, Codable, Sendable {
      case file = "File"
      case uffd = "Uffd"
    }
    public var backendPath: String
    public var backendType: BackendType
    enum CodingKeys: String, CodingKey {
      case backendPath = "backend_path"
      case backendType = "backend_type"
    }
  }
  /// Another TAP device for an interface of the snapshotted VM (Firecracker 1.12+).
  public struct NetworkOverride: Codable, Sendable, Equatable {
    public var ifaceId: String
    public var hostDevName: String
    enum CodingKeys: String, CodingKey {
      case ifaceId = "iface_id"
      case hostDevName = "host_dev_name"
    }
  }
  /// Another vsock socket path (Firecracker 1.16+; older versions reject the unknown field).
  public struct VsockOverride: Codable, Sendable, Equatable {
    public var udsPath: String
    enum CodingKeys: String, CodingKey { case udsPath = "uds_path" }
  }
  public var snapshotPath: String
  public var memBackend: MemoryBackend
  public var resumeVm: Bool
  public var networkOverrides: [NetworkOverride]
  public var vsockOverride: VsockOverride?
  enum CodingKeys: String, CodingKey {
    case snapshotPath = "snapshot_path"
    case memBackend = "mem_backend"
    case resumeVm = "resume_vm"
    case networkOverrides = "network_overrides"
    case vsockOverride = "vsock_override"
  }
}

/// The body of every error answer.
public struct FirecrackerFault: Codable, Sendable, Equatable {
  public var faultMessage: String
  enum CodingKeys: String, CodingKey { case faultMessage = "fault_message" }
}

/// `GET /version`.
public struct FirecrackerVersion: Codable, Sendable, Equatable {
  public var firecrackerVersion: String
  enum CodingKeys: String, CodingKey { case firecrackerVersion = "firecracker_version" }
}
