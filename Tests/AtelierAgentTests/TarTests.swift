import AtelierTar
import Foundation
import Testing

/// Writes tar archives byte by byte, including the ones no honest tar would write.
struct CraftedTar {
  var bytes: [UInt8] = []

  static func field(_ text: String, _ length: Int) -> [UInt8] {
    var value = Array(text.utf8.prefix(length))
    value += [UInt8](repeating: 0, count: length - value.count)
    return value
  }

  static func octal(_ value: Int, _ length: Int) -> [UInt8] {
    let digits = String(value, radix: 8)
    return field(String(repeating: "0", count: max(0, length - 1 - digits.count)) + digits, length)
  }

  mutating func header(
    _ name: String, type: Character, mode: Int = 0o644, size: Int = 0, link: String = "",
    magic: String = "ustar\u{0}00", prefix: String = ""
  ) {
    var block = Self.field(name, 100) + Self.octal(mode, 8) + Self.octal(0, 8) + Self.octal(0, 8)
    block += Self.octal(size, 12) + Self.octal(1_700_000_000, 12) + Array("        ".utf8)
    block += Array(String(type).utf8) + Self.field(link, 100) + Self.field(magic, 8)
    block += Self.field("root", 32) + Self.field("root", 32) + Self.octal(0, 8) + Self.octal(0, 8)
    block += Self.field(prefix, 155) + [UInt8](repeating: 0, count: 12)
    let sum = block.reduce(0) { $0 + Int($1) }
    block.replaceSubrange(148..<156, with: Self.octal(sum, 7) + [0])
    bytes += block
  }

  mutating func data(_ content: [UInt8]) {
    bytes += content
    bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
  }

  mutating func file(_ name: String, _ content: String, mode: Int = 0o644) {
    header(name, type: "0", mode: mode, size: content.utf8.count)
    data(Array(content.utf8))
  }

  mutating func end() { bytes += [UInt8](repeating: 0, count: 1024) }
}

@Suite struct TarTests {
  let scratch: String

  init() throws {
    scratch = "/tmp/atl-agent-tar-\(UInt32.random(in: 0...UInt32.max))"
    try FileManager.default.createDirectory(
      atPath: "\(scratch)/target", withIntermediateDirectories: true)
  }

  func extract(
    _ archive: CraftedTar, policy: TarExtractionPolicy = .untrusted, chunk: Int = 100
  ) throws -> TarExtractor {
    let extractor = try TarExtractor(directory: "\(scratch)/target", policy: policy)
    // Small, odd-sized chunks: headers and data are split across writes.
    var index = 0
    while index < archive.bytes.count {
      try extractor.write(Array(archive.bytes[index..<min(index + chunk, archive.bytes.count)]))
      index += chunk
    }
    try extractor.finish()
    return extractor
  }

  func mode(_ path: String) -> UInt32? {
    var info = stat()
    guard lstat(path, &info) == 0 else { return nil }
    return UInt32(info.st_mode)
  }

  @Test func hostileMembersAreSkippedAndOrdinaryOnesArrive() throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    try "outside".write(toFile: "\(scratch)/victim", atomically: true, encoding: .utf8)
    var tar = CraftedTar()
    tar.header("./", type: "5", mode: 0o755)
    tar.file("./ok.txt", "hello")
    tar.header("./sub/", type: "5", mode: 0o2775)
    tar.file("./sub/inner.txt", "inner", mode: 0o4755)
    tar.file("../escape.txt", "escaped")
    tar.file("./sub/../../escape2.txt", "escaped")
    tar.file("/tmp/atl-agent-absolute.txt", "absolute")
    tar.header("./etc", type: "2", link: "/etc")
    tar.file("./etc/passwd-atelier", "through the link")
    tar.header("./up", type: "2", link: "../victim")
    tar.header("./sub/sneaky", type: "2", link: "x/../../..")
    tar.header("./rel", type: "2", link: "sub/inner.txt")
    tar.header("./sub/back", type: "2", link: "../ok.txt")
    tar.header("./hard", type: "1", link: "../victim")
    tar.header("./hard-abs", type: "1", link: "/etc/passwd")
    tar.header("./hard-ok", type: "1", link: "./ok.txt")
    tar.header("./null", type: "3")
    tar.header("./disk", type: "4")
    tar.header("./fifo", type: "6")
    tar.end()
    let extractor = try extract(tar)
    let target = "\(scratch)/target"

    // Positive controls: the ordinary members arrived, with the user's rwx only.
    #expect(try String(contentsOfFile: "\(target)/ok.txt", encoding: .utf8) == "hello")
    #expect(try String(contentsOfFile: "\(target)/sub/inner.txt", encoding: .utf8) == "inner")
    #expect(mode("\(target)/sub/inner.txt").map { $0 & 0o7777 } == 0o700)
    #expect(mode("\(target)/ok.txt").map { $0 & 0o7777 } == 0o600)
    #expect(mode("\(target)/sub").map { $0 & 0o7777 } == 0o700)
    #expect(
      try FileManager.default.destinationOfSymbolicLink(atPath: "\(target)/rel") == "sub/inner.txt")
    #expect(
      try FileManager.default.destinationOfSymbolicLink(atPath: "\(target)/sub/back") == "../ok.txt"
    )
    #expect(try String(contentsOfFile: "\(target)/hard-ok", encoding: .utf8) == "hello")

    // Nothing outside, no link out, no device or FIFO.
    for path in [
      "\(scratch)/escape.txt", "\(scratch)/escape2.txt", "/tmp/atl-agent-absolute.txt",
      "/etc/passwd-atelier", "\(target)/up", "\(target)/sub/sneaky",
      "\(target)/hard", "\(target)/hard-abs", "\(target)/null", "\(target)/disk",
      "\(target)/fifo",
    ] {
      #expect(mode(path) == nil, "\(path) exists")
    }
    #expect(try String(contentsOfFile: "\(scratch)/victim", encoding: .utf8) == "outside")
    let reasons = Dictionary(extractor.skipped.map { ($0.path, $0.reason) }) { first, _ in first }
    #expect(reasons["../escape.txt"] == .parentReference)
    #expect(reasons["/tmp/atl-agent-absolute.txt"] == .absolutePath)
    #expect(reasons["./etc"] == .linkOutside)
    // With the link refused, the file under its name is an ordinary one inside.
    #expect(mode("\(target)/etc").map { $0 & S_IFMT } == S_IFDIR)
    #expect(
      try String(contentsOfFile: "\(target)/etc/passwd-atelier", encoding: .utf8)
        == "through the link")
    #expect(reasons["./sub/sneaky"] == .linkOutside)
    #expect(reasons["./hard"] == .linkOutside)
    #expect(reasons["./null"] == .specialFile)
    #expect(reasons["./fifo"] == .specialFile)
  }

  @Test func aSymlinkAlreadyInTheFolderIsNeverFollowed() throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    try FileManager.default.createDirectory(
      atPath: "\(scratch)/elsewhere", withIntermediateDirectories: true)
    try "keep".write(toFile: "\(scratch)/elsewhere/file", atomically: true, encoding: .utf8)
    try FileManager.default.createSymbolicLink(
      atPath: "\(scratch)/target/dir", withDestinationPath: "\(scratch)/elsewhere")
    try FileManager.default.createSymbolicLink(
      atPath: "\(scratch)/target/file", withDestinationPath: "\(scratch)/elsewhere/file")
    var tar = CraftedTar()
    tar.file("dir/new", "through a link")
    tar.file("file", "replaced")
    tar.end()
    let extractor = try extract(tar)
    #expect(!FileManager.default.fileExists(atPath: "\(scratch)/elsewhere/new"))
    #expect(try String(contentsOfFile: "\(scratch)/elsewhere/file", encoding: .utf8) == "keep")
    // The link at `file` was replaced by the member, not written through.
    #expect(mode("\(scratch)/target/file").map { $0 & S_IFMT } == S_IFREG)
    #expect(try String(contentsOfFile: "\(scratch)/target/file", encoding: .utf8) == "replaced")
    #expect(extractor.skipped.map(\.path) == ["dir/new"])
  }

  @Test func longNamesFromGNUAndPAXAndPOSIXPrefixes() throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let long = String(repeating: "d", count: 120) + "/" + String(repeating: "f", count: 130)
    var tar = CraftedTar()
    tar.header("././@LongLink", type: "L", size: long.utf8.count + 1)
    tar.data(Array(long.utf8) + [0])
    tar.header("truncated-name", type: "0", size: 3, magic: "ustar  \u{0}")
    tar.data(Array("gnu".utf8))
    let record = "path=pax/" + String(repeating: "p", count: 150)
    let line = "\(record.utf8.count + 5) \(record)\n"  // the length counts itself (3 digits)
    tar.header("./PaxHeaders/x", type: "x", size: line.utf8.count)
    tar.data(Array(line.utf8))
    tar.file("short", "pax")
    tar.header("name.txt", type: "0", size: 6, prefix: "posix/prefix")
    tar.data(Array("prefix".utf8))
    tar.end()
    let extractor = try extract(tar, chunk: 37)
    let target = "\(scratch)/target"
    #expect(extractor.skipped.isEmpty, "\(extractor.skipped)")
    #expect(try String(contentsOfFile: "\(target)/\(long)", encoding: .utf8) == "gnu")
    #expect(
      try String(
        contentsOfFile: "\(target)/pax/\(String(repeating: "p", count: 150))", encoding: .utf8)
        == "pax")
    #expect(
      try String(contentsOfFile: "\(target)/posix/prefix/name.txt", encoding: .utf8) == "prefix")
  }

  @Test func malformedArchivesThrow() throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    var corrupt = CraftedTar()
    corrupt.file("a", "text")
    corrupt.bytes[148] = UInt8(ascii: "7")  // checksum no longer matches
    #expect(throws: TarError.self) { _ = try extract(corrupt) }

    var cut = CraftedTar()
    cut.header("big", type: "0", size: 4096)
    cut.data(Array(repeating: 1, count: 100))
    #expect(throws: TarError.self) { _ = try extract(cut) }

    var huge = CraftedTar()
    huge.header("././@LongLink", type: "L", size: 2 << 20)
    #expect(throws: TarError.self) { _ = try extract(huge) }
  }

  /// What the system's tar writes (GNU tar here) unpacks whole: a positive control for the
  /// parser on real archives.
  @Test func archivesFromTheSystemTarRoundTrip() async throws {
    defer { try? FileManager.default.removeItem(atPath: scratch) }
    let source = "\(scratch)/source"
    let deep =
      "\(source)/"
      + (0..<6).map { _ in String(repeating: "n", count: 40) }
      .joined(separator: "/")
    try FileManager.default.createDirectory(atPath: deep, withIntermediateDirectories: true)
    try "deep".write(toFile: "\(deep)/leaf.txt", atomically: true, encoding: .utf8)
    try Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
      .write(to: URL(fileURLWithPath: "\(source)/binary"))
    try FileManager.default.createSymbolicLink(
      atPath: "\(source)/link", withDestinationPath: "binary")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["tar", "-c", "-f", "\(scratch)/real.tar", "-C", source, "."]
    try process.run()
    process.waitUntilExit()
    #expect(process.terminationStatus == 0)
    let archive = try Data(contentsOf: URL(fileURLWithPath: "\(scratch)/real.tar"))
    let extractor = try extract(CraftedTar(bytes: Array(archive)), chunk: 65536)
    #expect(extractor.skipped.isEmpty, "\(extractor.skipped)")
    let target = "\(scratch)/target"
    #expect(
      try Data(contentsOf: URL(fileURLWithPath: "\(target)/binary"))
        == Data(contentsOf: URL(fileURLWithPath: "\(source)/binary")))
    let relative = String(deep.dropFirst(source.count))
    #expect(try String(contentsOfFile: "\(target)\(relative)/leaf.txt", encoding: .utf8) == "deep")
    #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "\(target)/link") == "binary")
  }
}
