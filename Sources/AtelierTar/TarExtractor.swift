#if canImport(Glibc)
  import Glibc
#endif

/// What an extraction may create. Whatever the policy, nothing is created outside the folder
/// (no absolute or `..` members, every folder opened with `O_NOFOLLOW` from the one above it),
/// no link is ever followed to write, no device node or FIFO is made, and modes lose their
/// setuid, setgid and sticky bits.
public struct TarExtractionPolicy: Sendable {
  /// Permission bits kept from the archive (`0o700`: the user's own rwx only).
  public var permissionMask: UInt32
  /// Owner and group given (with `fchown` on the opened file, `AT_SYMLINK_NOFOLLOW` for
  /// links) to everything created; nil leaves them to whoever extracts.
  public var owner: (uid: UInt32, gid: UInt32)?
  /// Refuse symlinks that could point outside the folder (see `TarPath.symlinkStaysInside`).
  public var symlinksMustStayInside: Bool

  public init(
    permissionMask: UInt32, owner: (uid: UInt32, gid: UInt32)?, symlinksMustStayInside: Bool
  ) {
    self.permissionMask = permissionMask & 0o777
    self.owner = owner
    self.symlinksMustStayInside = symlinksMustStayInside
  }

  /// For a tar stream a guest produced, unpacked on the host: no owners, the user's own rwx,
  /// links only within the folder.
  public static let untrusted = TarExtractionPolicy(
    permissionMask: 0o700, owner: nil, symlinksMustStayInside: true)
}

/// Unpacks a tar stream into a folder, member by member as the bytes arrive. Members that the
/// policy refuses are skipped and listed in `skipped`; a malformed archive throws.
public final class TarExtractor {
  enum Current {
    case none
    case file(fd: Int32, header: TarHeader)
  }

  let policy: TarExtractionPolicy
  let root: Int32
  var parser = TarParser()
  var current = Current.none
  /// The last parent folder opened (most members share their folder with the one before).
  var cachedParent: (components: ArraySlice<String>, fd: Int32)?
  public private(set) var skipped: [TarSkip] = []
  public private(set) var createdCount = 0

  /// Opens `directory` (which must exist; a symlink naming it is followed: the caller chose it).
  public init(directory: String, policy: TarExtractionPolicy) throws {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw TarError("\(directory): \(Self.reason(errno))") }
    self.root = fd
    self.policy = policy
  }

  deinit {
    if case .file(let fd, _) = current { close(fd) }
    if let cachedParent { close(cachedParent.fd) }
    close(root)
  }

  public func write(_ bytes: [UInt8]) throws {
    try parser.feed(bytes) { event in
      switch event {
      case .member(let header): begin(header)
      case .data(let slice): writeData(slice)
      case .memberEnd: end()
      }
    }
  }

  /// Checks the archive ended cleanly.
  public func finish() throws {
    try parser.finish()
  }

  // MARK: Members

  func begin(_ header: TarHeader) {
    let components: [String]
    switch TarPath.components(header.path) {
    case .failure(let reason):
      return skip(header.path, reason)
    case .success(let parts):
      components = parts
    }
    guard let name = components.last else { return }  // the folder itself
    do {
      switch header.kind {
      case .characterDevice, .blockDevice, .fifo:
        return skip(header.path, .specialFile)
      case .other:
        return skip(header.path, .unsupportedType)
      case .directory:
        let parent = try parentFolder(components.dropLast(), create: true)
        try makeFolder(parent, name, mode: header.mode)
      case .file:
        let parent = try parentFolder(components.dropLast(), create: true)
        guard try removeExisting(parent, name) else { return skip(header.path, .folderInTheWay) }
        let fd = openat(
          parent, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(0o600))
        guard fd >= 0 else { throw TarSkip(path: header.path, reason: .failed, errno: errno) }
        current = .file(fd: fd, header: header)
      case .symlink:
        if policy.symlinksMustStayInside
          && !TarPath.symlinkStaysInside(
            target: header.linkTarget, parentDepth: components.count - 1)
        {
          return skip(header.path, .linkOutside, detail: "-> \(header.linkTarget)")
        }
        let parent = try parentFolder(components.dropLast(), create: true)
        guard try removeExisting(parent, name) else { return skip(header.path, .folderInTheWay) }
        guard symlinkat(header.linkTarget, parent, name) == 0 else {
          throw TarSkip(path: header.path, reason: .failed, errno: errno)
        }
        if let owner = policy.owner {
          _ = fchownat(parent, name, owner.uid, owner.gid, AT_SYMLINK_NOFOLLOW)
        }
        createdCount += 1
      case .hardLink:
        try hardLink(header, components: components)
      }
    } catch let problem as TarSkip {
      // Reported under the member's name; where on its way it stopped goes in the detail.
      var named = problem
      if named.path != header.path {
        named.detail = "\(named.path): \(named.detail ?? "")"
        named.path = header.path
      }
      skipped.append(named)
    } catch {
      skip(header.path, .failed, detail: "\(error)")
    }
  }

  /// A hard link to another member: its target must be inside too (it is an archive path).
  func hardLink(_ header: TarHeader, components: [String]) throws {
    guard case .success(let source) = TarPath.components(header.linkTarget),
      let sourceName = source.last
    else {
      return skip(header.path, .linkOutside, detail: "=> \(header.linkTarget)")
    }
    let sourceParent = try openFolder(source.dropLast(), create: false)
    defer { close(sourceParent) }
    let parent = try parentFolder(components.dropLast(), create: true)
    guard try removeExisting(parent, components.last!) else {
      return skip(header.path, .folderInTheWay)
    }
    // Flags 0: a link to a symlink links the symlink itself, never what it points at.
    guard linkat(sourceParent, sourceName, parent, components.last!, 0) == 0 else {
      throw TarSkip(path: header.path, reason: .failed, errno: errno)
    }
    createdCount += 1
  }

  func writeData(_ slice: ArraySlice<UInt8>) {
    guard case .file(let fd, let header) = current else { return }
    let ok = slice.withUnsafeBytes { raw -> Bool in
      var offset = 0
      while offset < raw.count {
        let count = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
        if count < 0 && errno == EINTR { continue }
        guard count > 0 else { return false }
        offset += count
      }
      return true
    }
    if !ok {
      let code = errno
      close(fd)
      current = .none
      skipped.append(TarSkip(path: header.path, reason: .failed, errno: code))
    }
  }

  func end() {
    guard case .file(let fd, let header) = current else { return }
    current = .none
    defer { close(fd) }
    if let owner = policy.owner { _ = fchown(fd, owner.uid, owner.gid) }
    _ = fchmod(fd, mode_t(header.mode & policy.permissionMask))
    var times = [
      timespec(tv_sec: Int(header.modificationTime), tv_nsec: 0),
      timespec(tv_sec: Int(header.modificationTime), tv_nsec: 0),
    ]
    _ = futimens(fd, &times)
    createdCount += 1
  }

  func skip(_ path: String, _ reason: TarSkip.Reason, detail: String? = nil) {
    skipped.append(TarSkip(path: path, reason: reason, detail: detail))
  }

  // MARK: Folders, never through a link

  /// The (cached) folder holding a member, created as needed.
  func parentFolder(_ components: ArraySlice<String>, create: Bool) throws -> Int32 {
    if let cachedParent, cachedParent.components == components { return cachedParent.fd }
    let fd = try openFolder(components, create: create)
    if let cachedParent { close(cachedParent.fd) }
    cachedParent = (components, fd)
    return fd
  }

  /// Opens `components` below the root one at a time with `O_NOFOLLOW`: a symlink anywhere on
  /// the way (one the archive made, or one already there) stops the member.
  func openFolder(_ components: ArraySlice<String>, create: Bool) throws -> Int32 {
    var fd = openat(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw TarSkip(path: ".", reason: .failed, errno: errno) }
    var walked = ""
    for component in components {
      walked += walked.isEmpty ? component : "/\(component)"
      var next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      if next < 0 && errno == ENOENT && create {
        if mkdirat(fd, component, mode_t(0o700)) == 0 || errno == EEXIST {
          next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
          if next >= 0 { settle(folder: next, mode: 0o755) }
        }
      }
      let code = errno
      close(fd)
      guard next >= 0 else {
        let reason: TarSkip.Reason = code == ELOOP || code == ENOTDIR ? .notAFolder : .failed
        throw TarSkip(path: walked, reason: reason, errno: code)
      }
      fd = next
    }
    return fd
  }

  /// A folder member: made (replacing a file or link in its place) or kept, then given its mode.
  func makeFolder(_ parent: Int32, _ name: String, mode: UInt32) throws {
    var info = stat()
    if fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 && info.st_mode & S_IFMT != S_IFDIR {
      guard unlinkat(parent, name, 0) == 0 else {
        throw TarSkip(path: name, reason: .failed, errno: errno)
      }
    }
    if mkdirat(parent, name, mode_t(0o700)) != 0 && errno != EEXIST {
      throw TarSkip(path: name, reason: .failed, errno: errno)
    }
    let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw TarSkip(path: name, reason: .notAFolder, errno: errno) }
    settle(folder: fd, mode: mode)
    close(fd)
    createdCount += 1
  }

  /// Owner and mode of a folder by its descriptor; always enterable and writable by its owner.
  func settle(folder fd: Int32, mode: UInt32) {
    if let owner = policy.owner { _ = fchown(fd, owner.uid, owner.gid) }
    _ = fchmod(fd, mode_t((mode & policy.permissionMask) | 0o700))
  }

  /// Removes a file or link at `name` so a new member can take its place (never writing
  /// through it). False when a folder is there.
  func removeExisting(_ parent: Int32, _ name: String) throws -> Bool {
    var info = stat()
    guard fstatat(parent, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else { return true }
    if info.st_mode & S_IFMT == S_IFDIR { return false }
    guard unlinkat(parent, name, 0) == 0 else {
      throw TarSkip(path: name, reason: .failed, errno: errno)
    }
    return true
  }

  static func reason(_ code: Int32) -> String { String(cString: strerror(code)) }
}

extension TarSkip: Error {
  init(path: String, reason: Reason, errno code: Int32) {
    self.init(path: path, reason: reason, detail: TarExtractor.reason(code))
  }
}
