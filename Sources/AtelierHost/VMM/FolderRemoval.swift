import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// Removes a folder a VM user could write (a sandbox's runtime folder) as root, without ever
/// following a link inside it: every step is relative to a descriptor of the folder above,
/// opened with `O_NOFOLLOW`. A recursive delete by path (FileManager's walk unlinks full
/// paths) can be sent through a directory swapped for a symlink mid-walk, and delete host
/// files.
public enum FolderRemoval {
  /// Deepest nesting followed; a guest-made tree deeper than this is left (and logged by the
  /// caller's next attempt, not looped on).
  static let maxDepth = 64

  /// Removes `path` and what it holds. The folder above `path` is trusted (root's own).
  public static func removeTree(_ path: String) {
    let url = URL(fileURLWithPath: path)
    let parent = open(url.deletingLastPathComponent().path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard parent >= 0 else { return }
    defer { close(parent) }
    remove(url.lastPathComponent, in: parent, depth: 0)
  }

  static func remove(_ name: String, in folder: Int32, depth: Int) {
    // Files, FIFOs, sockets and symlinks (the link itself) go at once.
    if unlinkat(folder, name, 0) == 0 || errno == ENOENT { return }
    guard errno == EISDIR, depth < maxDepth else { return }
    let fd = openat(folder, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { return }
    guard let directory = fdopendir(fd) else {
      close(fd)
      return
    }
    var names: [String] = []
    while let entry = readdir(directory) {
      let child = withUnsafePointer(to: &entry.pointee.d_name) {
        String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self))
      }
      if child != "." && child != ".." { names.append(child) }
    }
    for child in names { remove(child, in: fd, depth: depth + 1) }
    closedir(directory)
    unlinkat(folder, name, AT_REMOVEDIR)
  }
}
