import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Watches a folder with inotify (the guest kernels of both images have it) and streams its
/// changes, named relative to the folder. Recursive watches add a watch for every folder
/// below, and for folders as they appear. Changes are named the way fsnotify (which E2B's
/// envd uses) names them: create (also moved in), write, remove, rename (moved away), chmod.
enum DirectoryWatcher {
  static let mask: UInt32 =
    UInt32(IN_CREATE) | UInt32(IN_DELETE) | UInt32(IN_MODIFY) | UInt32(IN_MOVED_FROM)
    | UInt32(IN_MOVED_TO) | UInt32(IN_ATTRIB)

  /// `started` first (the watch is in place when it comes), then the changes, until the
  /// consumer stops iterating.
  static func watch(path raw: String?, recursive: Bool, includeEntry: Bool) throws
    -> AsyncStream<WatchEventFrame>
  {
    let root = try FileService.checkedPath(raw)
    guard directoryExists(root) else {
      var info = Glibc.stat()
      throw lstat(root, &info) == 0
        ? APIError.badRequest("\(root) is not a directory") : FileService.failure(ENOENT, root)
    }
    let fd = inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK))
    guard fd >= 0 else {
      throw APIError.internalError("inotify: \(String(cString: strerror(errno)))")
    }
    let watches = Watches(fd: fd, root: root)
    do {
      try watches.add(root, relative: "", recursive: recursive, isRoot: true)
    } catch {
      close(fd)
      throw error
    }
    let (stream, continuation) = AsyncStream.makeStream(of: WatchEventFrame.self)
    let stopped = OnceFlag()
    continuation.onTermination = { _ in stopped.set() }
    continuation.yield(WatchEventFrame(type: .started))
    OSThread {
      defer { close(fd) }
      var buffer = [UInt8](repeating: 0, count: 64 << 10)
      while !stopped.isSet {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 200) > 0 else { continue }
        let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard count > 0 else { continue }
        for event in parse(buffer[0..<count]) {
          guard let frame = watches.frame(for: event, recursive: recursive) else { continue }
          var described = frame
          if includeEntry, frame.change != .remove, frame.change != .rename, let name = frame.name {
            described.entry = try? FileService.describe(path: join(root, name))
          }
          continuation.yield(described)
        }
      }
      continuation.finish()
    }.start()
    return stream
  }

  struct RawEvent {
    var wd: Int32
    var mask: UInt32
    var name: String
  }

  /// `struct inotify_event` records: wd, mask, cookie, len, then `len` bytes of name.
  static func parse(_ bytes: ArraySlice<UInt8>) -> [RawEvent] {
    var events: [RawEvent] = []
    var offset = bytes.startIndex
    func word(_ at: Int) -> UInt32 {
      UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16
        | UInt32(bytes[at + 3]) << 24
    }
    while offset + 16 <= bytes.endIndex {
      let length = Int(word(offset + 12))
      guard offset + 16 + length <= bytes.endIndex else { break }
      let nameBytes = bytes[(offset + 16)..<(offset + 16 + length)].prefix { $0 != 0 }
      events.append(
        RawEvent(
          wd: Int32(bitPattern: word(offset)), mask: word(offset + 4),
          name: String(decoding: nameBytes, as: UTF8.self)))
      offset += 16 + length
    }
    return events
  }

  static func join(_ root: String, _ name: String) -> String {
    name.isEmpty ? root : (root == "/" ? "/\(name)" : "\(root)/\(name)")
  }

  /// The watch descriptors and the folder (relative to the root) each one watches.
  final class Watches: Sendable {
    let fd: Int32
    let root: String
    private let folders = Mutex<[Int32: String]>([:])

    init(fd: Int32, root: String) {
      self.fd = fd
      self.root = root
    }

    func add(_ path: String, relative: String, recursive: Bool, isRoot: Bool = false) throws {
      let wd = inotify_add_watch(fd, path, DirectoryWatcher.mask | UInt32(IN_DONT_FOLLOW))
      guard wd >= 0 else {
        if isRoot { throw FileService.failure(errno, path) }
        return
      }
      folders.withLock { $0[wd] = relative }
      guard recursive, let directory = opendir(path) else { return }
      var children: [String] = []
      while let item = readdir(directory) {
        let name = withUnsafePointer(to: item.pointee.d_name) {
          $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
        }
        if name != "." && name != ".." && item.pointee.d_type == UInt8(DT_DIR) {
          children.append(name)
        }
      }
      closedir(directory)
      for child in children {
        try add(
          DirectoryWatcher.join(path, child),
          relative: relative.isEmpty ? child : "\(relative)/\(child)", recursive: true)
      }
    }

    func frame(for event: RawEvent, recursive: Bool) -> WatchEventFrame? {
      if event.mask & UInt32(IN_IGNORED) != 0 {
        _ = folders.withLock { $0.removeValue(forKey: event.wd) }
        return nil
      }
      guard let folder = folders.withLock({ $0[event.wd] }), !event.name.isEmpty else {
        return nil
      }
      let name = folder.isEmpty ? event.name : "\(folder)/\(event.name)"
      let isDirectory = event.mask & UInt32(IN_ISDIR) != 0
      if recursive && isDirectory && event.mask & (UInt32(IN_CREATE) | UInt32(IN_MOVED_TO)) != 0 {
        try? add(DirectoryWatcher.join(root, name), relative: name, recursive: true)
      }
      let change: WatchEventFrame.Change
      if event.mask & (UInt32(IN_CREATE) | UInt32(IN_MOVED_TO)) != 0 {
        change = .create
      } else if event.mask & UInt32(IN_DELETE) != 0 {
        change = .remove
      } else if event.mask & UInt32(IN_MOVED_FROM) != 0 {
        change = .rename
      } else if event.mask & UInt32(IN_MODIFY) != 0 {
        change = .write
      } else if event.mask & UInt32(IN_ATTRIB) != 0 {
        change = .chmod
      } else {
        return nil
      }
      return WatchEventFrame(type: .event, name: name, change: change)
    }
  }
}
