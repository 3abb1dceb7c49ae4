import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

#if canImport(Glibc)
  import Glibc
#endif

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

/// Firecracker's REST API on the Unix socket given to `firecracker --api-sock`, through
/// AsyncHTTPClient (`http+unix`): one method per endpoint Atelier uses, named after the
/// swagger's operation and documented with the endpoint it maps to
/// (firecracker-microvm/firecracker, src/firecracker/swagger/firecracker.yaml). Each call is
/// one request on its own connection (`Connection: close`): the manager sends few, and no
/// idle connection outlives a VM.
public struct FirecrackerClient: Sendable {
  public let socketPath: String
  /// For calls that do not name their own.
  public let timeout: Duration

  public init(socketPath: String, timeout: Duration = .seconds(30)) {
    self.socketPath = socketPath
    self.timeout = timeout
  }

  /// `GET /` (describeInstance): the instance's id, state and version.
  public func describeInstance() async throws -> FirecrackerInstanceInfo {
    try await get("/", as: FirecrackerInstanceInfo.self)
  }

  /// `GET /version` (getFirecrackerVersion), e.g. "1.16.0".
  public func version() async throws -> String {
    try await get("/version", as: FirecrackerVersion.self).firecrackerVersion
  }

  /// `PUT /machine-config` (putMachineConfiguration): vCPUs and memory. Pre-boot only.
  public func putMachineConfiguration(_ body: FirecrackerMachineConfig) async throws {
    try await send(.PUT, "/machine-config", body)
  }

  /// `PUT /boot-source` (putGuestBootSource): kernel, initrd and command line. Pre-boot only.
  public func putBootSource(_ body: FirecrackerBootSource) async throws {
    try await send(.PUT, "/boot-source", body)
  }

  /// `PUT /drives/{drive_id}` (putGuestDriveByID). Pre-boot only.
  public func putDrive(_ body: FirecrackerDrive) async throws {
    try await send(.PUT, "/drives/\(body.driveId)", body)
  }

  /// `PUT /network-interfaces/{iface_id}` (putGuestNetworkInterfaceByID). Pre-boot only.
  public func putNetworkInterface(_ body: FirecrackerNetworkInterface) async throws {
    try await send(.PUT, "/network-interfaces/\(body.ifaceId)", body)
  }

  /// `PUT /vsock` (putGuestVsock). Pre-boot only.
  public func putVsock(_ body: FirecrackerVsock) async throws {
    try await send(.PUT, "/vsock", body)
  }

  /// `PUT /actions` (createSyncAction), e.g. `InstanceStart`.
  public func createSyncAction(_ body: FirecrackerAction) async throws {
    try await send(.PUT, "/actions", body)
  }

  /// `PATCH /vm` (patchVm): pause or resume the vCPUs.
  public func patchVm(_ body: FirecrackerVMState) async throws {
    try await send(.PATCH, "/vm", body)
  }

  /// `PUT /snapshot/create` (createSnapshot) of the paused VM. Writing a full snapshot takes
  /// seconds per GiB of memory: give it a `timeout` to match.
  public func createSnapshot(_ body: FirecrackerSnapshotCreate, timeout: Duration) async throws {
    try await send(.PUT, "/snapshot/create", body, timeout: timeout)
  }

  /// `PUT /snapshot/load` (loadSnapshot): only a fresh process accepts it.
  public func loadSnapshot(_ body: FirecrackerSnapshotLoad, timeout: Duration) async throws {
    try await send(.PUT, "/snapshot/load", body, timeout: timeout)
  }

  /// Whether something accepts connections on the socket yet.
  public static func isListening(_ socketPath: String) -> Bool {
    guard let fd = try? UnixSocket.connect(socketPath) else { return false }
    close(fd)
    return true
  }

  // MARK: Transport

  func get<Answer: Decodable>(_ path: String, as type: Answer.Type) async throws -> Answer {
    let body = try await exchange(.GET, path, body: nil, timeout: timeout)
    do {
      return try JSONDecoder().decode(Answer.self, from: body)
    } catch {
      throw FirecrackerAPIError(
        method: "GET", path: path, status: 200, faultMessage: "unexpected answer: \(error)")
    }
  }

  func send(_ method: HTTPMethod, _ path: String, _ body: some Encodable, timeout: Duration? = nil)
    async throws
  {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    _ = try await exchange(
      method, path, body: try encoder.encode(body), timeout: timeout ?? self.timeout)
  }

  /// One request; a status outside 2xx throws with Firecracker's fault message.
  func exchange(_ method: HTTPMethod, _ path: String, body: Data?, timeout: Duration) async throws
    -> Data
  {
    guard let url = URL(httpURLWithSocketPath: socketPath, uri: path) else {
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: nil,
        faultMessage: "unusable socket path \(socketPath)")
    }
    // A missing or dead socket fails at once (the HTTP client would retry until the timeout).
    guard Self.isListening(socketPath) else {
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: nil,
        faultMessage: "no answer on \(socketPath): nothing listens there")
    }
    var request = HTTPClientRequest(url: url.absoluteString)
    request.method = method
    request.headers.add(name: "accept", value: "application/json")
    request.headers.add(name: "connection", value: "close")
    if let body {
      request.headers.add(name: "content-type", value: "application/json")
      request.body = .bytes(ByteBuffer(bytes: body))
    }
    let seconds = max(1, Int64(timeout.components.seconds))
    let response: HTTPClientResponse
    let answer: ByteBuffer
    do {
      response = try await HTTPClient.shared.execute(request, timeout: .seconds(seconds))
      answer = try await response.body.collect(upTo: 1 << 20)
    } catch {
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: nil,
        faultMessage: "no answer on \(socketPath): \(error)")
    }
    let data = Data(answer.readableBytesView)
    guard (200..<300).contains(Int(response.status.code)) else {
      let fault = try? JSONDecoder().decode(FirecrackerFault.self, from: data)
      throw FirecrackerAPIError(
        method: method.rawValue, path: path, status: Int(response.status.code),
        faultMessage: fault?.faultMessage ?? String(decoding: data.prefix(500), as: UTF8.self))
    }
    return data
  }
}
