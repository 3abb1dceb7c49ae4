import AtelierProcess
import Foundation
import Testing

@testable import AtelierHost

#if canImport(Glibc)
  import Glibc
#endif

/// The host-side pieces of memory-file snapshots, capped consoles and manager-written disk
/// chains, without VMs.
@Suite struct MemoryAndConsoleTests {
  func temporaryDirectory() throws -> String {
    let path = "/tmp/atl-unit-\(UUID().uuidString.prefix(8).lowercased())"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  /// A 64 MiB file with data in two places and holes elsewhere.
  func sparseFile(_ path: String) throws {
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
    defer { close(fd) }
    #expect(ftruncate(fd, 64 << 20) == 0)
    for (offset, byte) in [(0, UInt8(0x11)), (40 << 20, UInt8(0x22))] {
      let chunk = [UInt8](repeating: byte, count: 1 << 20)
      _ = chunk.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
    }
  }

  @Test func sparseCopiesKeepTheContentAndTheHoles() throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try sparseFile("\(dir)/source")
    let method = try FileCopy.copy(file: "\(dir)/source", to: "\(dir)/copy")
    #expect(
      FileManager.default.contents(atPath: "\(dir)/copy")
        == FileManager.default.contents(atPath: "\(dir)/source"))
    // Only what was allocated takes room (a reflink shares even that).
    #expect(FileCopy.allocatedBytes("\(dir)/copy") <= 4 << 20, "\(method)")
    // The target must be new, and links are not followed.
    #expect(throws: VolumeError.self) {
      try FileCopy.copy(file: "\(dir)/source", to: "\(dir)/copy")
    }
    symlink("/etc/passwd", "\(dir)/link")
    #expect(throws: VolumeError.self) { try FileCopy.copy(file: "\(dir)/link", to: "\(dir)/x") }
  }

  /// The pages a process wrote into a private mapping of a file, found through its pagemap,
  /// laid over a copy of the file: exactly what the process sees.
  @Test func privatePagesOfAMappingAreCapturedOverItsBase() throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let base = "\(dir)/base"
    try sparseFile(base)
    let fd = open(base, O_RDONLY)
    defer { close(fd) }
    let size = 64 << 20
    let mapping: UnsafeMutableRawPointer = mmap(
      nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0)
    try #require(mapping != UnsafeMutableRawPointer(bitPattern: -1))
    defer { munmap(mapping, size) }
    let bytes = mapping.assumingMemoryBound(to: UInt8.self)
    // Written: a page in the data at 0, a page in a hole, and one byte of a page at 40 MiB.
    // Read only: a page elsewhere (it stays the file's).
    for index in 0..<4096 { bytes[4096 + index] = 0xaa }
    for index in 0..<4096 { bytes[(10 << 20) + index] = 0xbb }
    bytes[(40 << 20) + 8192] = 0xcc
    var sink: UInt8 = 0
    for index in stride(from: 20 << 20, to: 21 << 20, by: 4096) { sink &+= bytes[index] }
    #expect(sink == 0)

    try FileCopy.copy(file: base, to: "\(dir)/snapshot")
    let target = open("\(dir)/snapshot", O_WRONLY)
    defer { close(target) }
    let pages = try PrivatePages.capture(pid: getpid(), mappingOf: base, into: target)
    #expect(pages == 3)
    let snapshot = try #require(FileManager.default.contents(atPath: "\(dir)/snapshot"))
    #expect(snapshot.count == size)
    #expect(snapshot == Data(bytes: mapping, count: size))
    // The base itself was never written.
    let original = try #require(FileManager.default.contents(atPath: base))
    #expect(
      original[4096] == 0x11 && original[10 << 20] == 0 && original[(40 << 20) + 8192] == 0x22)
  }

  @Test func mappingsAreFoundByDeviceAndInodeOnly() {
    let maps = """
      7f0000000000-7f0010000000 rw-p 00000000 fe:01 1234                       /somewhere/else
      7f0010000000-7f0010001000 r--p 00000000 fe:01 999                        /x
      7f0020000000-7f0030000000 rw-p 00100000 fe:01 1234                       (deleted)
      7f0040000000-7f0050000000 rw-p 00000000 fe:02 1234                       /other-device
      """
    // fe:01 is major 254, minor 1.
    let segments = PrivatePages.parseMappings(maps, device: 254 << 8 | 1, inode: 1234)
    #expect(
      segments == [
        .init(start: 0x7f00_0000_0000, end: 0x7f00_1000_0000, fileOffset: 0),
        .init(start: 0x7f00_2000_0000, end: 0x7f00_3000_0000, fileOffset: 0x10_0000),
      ])
  }

  /// Whatever comes through the FIFO, the two log files hold at most the cap; the newest
  /// output is the tail; nothing blocks the writer.
  @Test func consoleRelayCapsTheLogAndKeepsTheTail() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let console = ConsoleLog(runtimeDirectory: dir)
    try console.prepare(owner: nil)
    let cap = 256 << 10
    try ConsoleRelays.shared.start(console, capBytes: cap)
    defer { ConsoleRelays.shared.stop(dir) }
    let writer = open(console.fifoPath, O_WRONLY | O_CLOEXEC)
    #expect(writer >= 0)
    var line = 0
    var written = 0
    while written < 4 << 20 {
      let text = Array("line \(line) \(String(repeating: "x", count: 100))\n".utf8)
      writeAll(fd: writer, text)
      written += text.count
      line += 1
    }
    close(writer)
    try await Task.sleep(for: .milliseconds(300))
    let tail = console.tail(lines: 3)
    #expect(tail.contains("line \(line - 1) "), "\(tail.suffix(200))")
    #expect(console.sizeBytes <= cap)
    #expect(console.sizeBytes > cap / 4)
    // A log replaced by a link is not followed: the relay starts a file of its own.
    try? FileManager.default.removeItem(atPath: console.logPath)
    symlink("\(dir)/elsewhere", console.logPath)
    ConsoleRelays.shared.stop(dir)
    try ConsoleRelays.shared.start(console, capBytes: cap)
    let again = open(console.fifoPath, O_WRONLY | O_CLOEXEC)
    writeAll(fd: again, Array("after the link\n".utf8))
    close(again)
    try await Task.sleep(for: .milliseconds(400))
    #expect(!FileManager.default.fileExists(atPath: "\(dir)/elsewhere"))
    #expect(console.tail(lines: 2).contains("after the link"))
  }

  /// A raw clone's first bytes are its guest's: a qcow2 header written there names nothing the
  /// store keeps or reads. The chain is what the manager recorded.
  @Test func garbageCollectionFollowsRecordedChainsNotDiskContents() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let store = FileVolumeStore(directory: "\(dir)/volumes")
    let image = "\(dir)/image.img"
    FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20))
    // A sandbox on a qcow2 overlay, frozen into a snapshot: the new top's sidecar names it.
    _ = try await store.clone(base: DiskAttachment(path: image, format: .raw), to: "sandbox-a")
    let plan = try await store.prepareFreeze("sandbox-a", as: "snapshot-kept")
    try await store.commitFreeze(plan)
    #expect(store.backingChain(of: plan.next.path) == [plan.frozen.path, image])
    // A snapshot disk nothing needs, and a raw volume whose content is a qcow2 header naming it.
    let orphan = "\(dir)/volumes/snapshot-orphan.qcow2"
    try Qcow2Overlay.create(
      at: orphan, backingFile: image, backingFormat: .raw, virtualSize: 1 << 20)
    let raw = "\(dir)/volumes/sandbox-b.img"
    try Qcow2Overlay.create(
      at: raw, backingFile: orphan, backingFormat: .qcow2, virtualSize: 1 << 20)
    #expect(store.backingChain(of: raw).isEmpty)
    let removed = await store.collectGarbage(keep: [])
    // The orphan goes; the frozen disk under sandbox-a's top stays.
    #expect(removed == ["snapshot-orphan"])
    #expect(FileManager.default.fileExists(atPath: plan.frozen.path))
    #expect(try await store.list() == ["sandbox-a", "sandbox-b", "snapshot-kept"])
    try await store.remove("sandbox-a")
    #expect(await store.collectGarbage(keep: []) == ["snapshot-kept"])
    // Sidecars go with their disks.
    let left = try FileManager.default.contentsOfDirectory(atPath: "\(dir)/volumes")
    #expect(left == ["sandbox-b.img"])
  }
}
