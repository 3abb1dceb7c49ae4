import Foundation

/// What `atelier login` stores: a manager's URL and an API key for it, in
/// `~/.config/atelier/credentials` (`$XDG_CONFIG_HOME` when set), readable by you alone.
struct Credentials: Codable, Equatable {
  var url: String
  var key: String

  static var path: String {
    let environment = ProcessInfo.processInfo.environment
    let base =
      environment["XDG_CONFIG_HOME"].flatMap { $0.hasPrefix("/") ? $0 : nil }
      ?? "\(environment["HOME"] ?? NSHomeDirectory())/.config"
    return "\(base)/atelier/credentials"
  }

  static func load() -> Credentials? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return try? JSONDecoder().decode(Credentials.self, from: data)
  }

  /// Written to a temporary file made 0600 (its folder 0700), then renamed into place: the key
  /// is never in a file anyone else may read, not even for a moment.
  func save() throws {
    let folder = (Self.path as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(
      atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    let temporary = "\(Self.path).tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw CLIError("cannot write \(Self.path)") }
    fchmod(fd, 0o600)
    let bytes = Array(try JSONEncoder().encode(self))
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    fsync(fd)
    close(fd)
    guard written == bytes.count, rename(temporary, Self.path) == 0 else {
      unlink(temporary)
      throw CLIError("cannot write \(Self.path)")
    }
  }

  /// Removes the stored key; false when there was none.
  static func remove() -> Bool {
    unlink(path) == 0
  }

  /// URLs compared without a trailing slash.
  static func normalized(_ url: String) -> String {
    url.hasSuffix("/") ? String(url.dropLast()) : url
  }
}
