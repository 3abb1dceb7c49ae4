/// Archive paths and link targets, checked before anything is created.
public enum TarPath {
  /// The components of a member's path relative to the extraction folder, or why it is
  /// refused: absolute paths and `..` anywhere. Empty for the folder itself (`.` or `./`).
  public static func components(_ path: String) -> Result<[String], TarSkip.Reason> {
    if path.hasPrefix("/") { return .failure(.absolutePath) }
    var parts: [String] = []
    for part in path.split(separator: "/", omittingEmptySubsequences: true) where part != "." {
      if part == ".." { return .failure(.parentReference) }
      parts.append(String(part))
    }
    return .success(parts)
  }

  /// Whether a symlink at `parent/…` pointing at `target` stays inside the extraction folder
  /// whatever the other links in it are: relative, `..` only as a leading run no deeper than
  /// the link's own folder (so it climbs through real folders only: the extractor never
  /// creates a folder through a link), then plain names.
  public static func symlinkStaysInside(target: String, parentDepth: Int) -> Bool {
    guard !target.isEmpty, !target.hasPrefix("/") else { return false }
    var climbing = true
    var climbs = 0
    for part in target.split(separator: "/", omittingEmptySubsequences: true) where part != "." {
      if part == ".." {
        guard climbing else { return false }
        climbs += 1
      } else {
        climbing = false
      }
    }
    return climbs <= parentDepth
  }
}

/// A member the extractor did not create, and why.
public struct TarSkip: Sendable, Equatable, CustomStringConvertible {
  public enum Reason: String, Sendable, Equatable, Error {
    case absolutePath = "an absolute path"
    case parentReference = "a .. in its path"
    case linkOutside = "a link pointing outside the folder"
    case specialFile = "a device node or FIFO"
    case unsupportedType = "an unsupported member type"
    case notAFolder = "a parent that is not a folder (or is a symlink)"
    case folderInTheWay = "a folder in the way"
    case failed = "an error"
  }
  public var path: String
  public var reason: Reason
  public var detail: String?
  public init(path: String, reason: Reason, detail: String? = nil) {
    self.path = path
    self.reason = reason
    self.detail = detail
  }
  public var description: String {
    "\(path): skipped, \(reason.rawValue)" + (detail.map { " (\($0))" } ?? "")
  }
}
