import AtelierProcess
import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// A VM's serial console, capped. The VMM writes into a FIFO in the runtime directory
/// (`console.pipe`); the manager relays what arrives into `console.log`, which is rotated to
/// `console.log.1` at half the cap, so the two never hold more than `capBytes` together,
/// whatever the guest prints. While no manager runs nothing reads the FIFO: the VMM's writes
/// fail (EPIPE) and are dropped, the guest never blocks on them, and a restarted manager opens
/// the FIFO again. Everything in the runtime directory may be the VM user's doing (it owns the
/// folder), so the log files are opened without following links and checked to be plain files
/// of the manager's own.
public struct ConsoleLog: Sendable {
  public let runtimeDirectory: String

  public static let defaultCapBytes = 1 << 20
  /// How much of the console an error shows: enough for a kernel panic's trace and what the
  /// guest printed just before it.
  public static let tailLines = 60
  static let fifoName = "console.pipe"
  static let logName = "console.log"
  static let olderLogName = "console.log.1"

  public init(runtimeDirectory: String) {
    self.runtimeDirectory = runtimeDirectory
  }

  public var fifoPath: String { "\(runtimeDirectory)/\(Self.fifoName)" }
  public var logPath: String { "\(runtimeDirectory)/\(Self.logName)" }
  var olderLogPath: String { "\(runtimeDirectory)/\(Self.olderLogName)" }

  /// Opens the FIFO (non-blocking) and nothing else: the folder is the VM user's, so what is
  /// at that name may be a symlink or a file planted there, which root must not open.
  static func openFIFO(_ path: String, _ access: Int32) throws -> Int32 {
    let fd = open(path, access | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
    guard fd >= 0 else {
      throw VMMError("cannot open \(path): \(String(cString: strerror(errno)))")
    }
    var info = stat()
    guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFIFO else {
      close(fd)
      throw VMMError("\(path) is not the console FIFO: refused")
    }
    return fd
  }

  /// A fresh FIFO (and no old log), owned by whoever runs the VMM: it opens it by name.
  public func prepare(owner: VMUser?) throws {
    for path in [fifoPath, logPath, olderLogPath] { unlink(path) }
    guard mkfifo(fifoPath, 0o600) == 0 else {
      throw VMMError("cannot create \(fifoPath): \(String(cString: strerror(errno)))")
    }
    if let owner, lchown(fifoPath, owner.uid, owner.gid) != 0 {
      throw VMMError(
        "cannot hand \(fifoPath) to \(owner.name): \(String(cString: strerror(errno)))")
    }
  }

  /// The last `lines` lines (of at most the last 64 KiB), older file first.
  public func tail(lines: Int, maxBytes: Int = 64 << 10) -> String {
    ConsoleRelays.shared.drain(runtimeDirectory)
    var data = Self.readTail(of: logPath, maxBytes: maxBytes)
    if data.count < maxBytes {
      data = Self.readTail(of: olderLogPath, maxBytes: maxBytes - data.count) + data
    }
    let text = String(decoding: data, as: UTF8.self)
    return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
      .joined(separator: "\n")
  }

  /// Bytes the log files hold now.
  public var sizeBytes: Int {
    [logPath, olderLogPath].reduce(0) { total, path in
      var info = stat()
      return lstat(path, &info) == 0 ? total + Int(info.st_size) : total
    }
  }

  /// O_NONBLOCK: a FIFO put in the file's place must not hang the reader.
  static func readTail(of path: String, maxBytes: Int) -> Data {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    guard fd >= 0 else { return Data() }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, maxBytes > 0 else {
      return Data()
    }
    let start = max(0, Int(info.st_size) - maxBytes)
    var buffer = [UInt8](repeating: 0, count: Int(info.st_size) - start)
    let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(start)) }
    return count > 0 ? Data(buffer.prefix(count)) : Data()
  }
}

/// The relays of this manager, one thread each, keyed by runtime directory.
public final class ConsoleRelays: Sendable {
  public static let shared = ConsoleRelays()
  private let relays = Mutex<[String: ConsoleRelay]>([:])

  /// Starts relaying `log`'s FIFO into its files (again after a manager restart; a relay that
  /// runs already is kept).
  public func start(_ log: ConsoleLog, capBytes: Int) throws {
    let relay = try relays.withLock { relays -> ConsoleRelay? in
      if relays[log.runtimeDirectory] != nil { return nil }
      let relay = try ConsoleRelay(log: log, capBytes: capBytes)
      relays[log.runtimeDirectory] = relay
      return relay
    }
    guard let relay else { return }
    OSThread { [self] in
      relay.run()
      _ = relays.withLock { relays in
        if relays[log.runtimeDirectory] === relay { relays[log.runtimeDirectory] = nil }
      }
    }.start()
  }

  /// A write end of the FIFO for a VMM's stdout and stderr (non-blocking: when the pipe is
  /// full, output is dropped rather than stalling the VMM). The caller closes it.
  public func writeEnd(_ log: ConsoleLog) throws -> Int32 {
    try ConsoleLog.openFIFO(log.fifoPath, O_WRONLY)
  }

  /// The relay ends once `pid` is gone and the FIFO is empty.
  public func watch(_ runtimeDirectory: String, pid: Int32) {
    relays.withLock { $0[runtimeDirectory] }?.watch(pid)
  }

  /// Writes out what is in the FIFO now (before a tail is read).
  public func drain(_ runtimeDirectory: String) {
    relays.withLock { $0[runtimeDirectory] }?.pump(wait: 0)
  }

  public func stop(_ runtimeDirectory: String) {
    relays.withLock { $0.removeValue(forKey: runtimeDirectory) }?.stop()
  }

  public func isRelaying(_ runtimeDirectory: String) -> Bool {
    relays.withLock { $0[runtimeDirectory] != nil }
  }
}

/// One FIFO → capped files. The FIFO is held open for reading and writing, so it never reports
/// end of file while the VMM restarts its writes, and reads never block.
final class ConsoleRelay: Sendable {
  private struct State {
    var file = CappedFile()
    var pid: Int32?
    var stopped = false
  }
  private let fifo: Int32
  private let state: Mutex<State>

  init(log: ConsoleLog, capBytes: Int) throws {
    fifo = try ConsoleLog.openFIFO(log.fifoPath, O_RDWR)
    state = Mutex(
      State(file: CappedFile(path: log.logPath, olderPath: log.olderLogPath, capBytes: capBytes)))
  }

  func watch(_ pid: Int32) { state.withLock { $0.pid = pid } }

  /// What the FIFO holds now goes to this relay's files; after that it reads nothing, so a
  /// relay started in its place (a manager taking the VM over) gets everything written since.
  func stop() {
    pump(wait: 0)
    state.withLock { $0.stopped = true }
  }

  func run() {
    defer { close(fifo) }
    while true {
      let moved = pump(wait: 250)
      let (stopped, pid) = state.withLock { ($0.stopped, $0.pid) }
      if stopped { break }
      if let pid, moved == 0, !HostProcesses.isAlive(pid) {
        pump(wait: 0)
        break
      }
    }
    state.withLock { $0.file.close() }
  }

  /// Moves what the FIFO holds into the files (waiting up to `wait` ms for something).
  @discardableResult
  func pump(wait: Int32) -> Int {
    var descriptor = pollfd(fd: fifo, events: Int16(POLLIN), revents: 0)
    guard poll(&descriptor, 1, wait) > 0 else { return 0 }
    var buffer = [UInt8](repeating: 0, count: 65536)
    var moved = 0
    return state.withLock { state in
      guard !state.stopped else { return 0 }
      while moved < 1 << 20 {
        let count = buffer.withUnsafeMutableBytes { read(fifo, $0.baseAddress, $0.count) }
        guard count > 0 else { break }
        state.file.append(buffer[0..<count])
        moved += count
      }
      return moved
    }
  }
}

/// `path` up to half the cap, then renamed to `olderPath` and started again.
struct CappedFile {
  var path = ""
  var olderPath = ""
  var capBytes = ConsoleLog.defaultCapBytes
  private var fd: Int32 = -1
  private var size = 0

  init() {}

  init(path: String, olderPath: String, capBytes: Int) {
    self.path = path
    self.olderPath = olderPath
    self.capBytes = max(8192, capBytes)
  }

  mutating func append(_ bytes: ArraySlice<UInt8>) {
    var rest = bytes
    while !rest.isEmpty {
      if fd < 0 { reopen() }
      guard fd >= 0 else { return }
      let room = capBytes / 2 - size
      if room <= 0 {
        rotate()
        continue
      }
      let chunk = rest.prefix(room)
      let written = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
      guard written > 0 else { return }
      size += written
      rest = rest.dropFirst(written)
    }
  }

  mutating func close() {
    if fd >= 0 { Glibc.close(fd) }
    fd = -1
  }

  /// Appends to the existing log when it is a plain file of ours (after a manager restart),
  /// else starts a new one in its place.
  private mutating func reopen() {
    var info = stat()
    let existing = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
    if existing >= 0, fstat(existing, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG,
      info.st_nlink == 1, info.st_uid == geteuid()
    {
      fd = existing
      size = Int(info.st_size)
      return
    }
    if existing >= 0 { Glibc.close(existing) }
    for _ in 0..<3 {
      unlink(path)
      fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o640)
      if fd >= 0 { break }
    }
    size = 0
  }

  private mutating func rotate() {
    close()
    if rename(path, olderPath) != 0 { unlink(path) }
    reopen()
  }
}
