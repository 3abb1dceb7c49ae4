import Foundation

/// Firecracker boots an uncompressed ELF `vmlinux`; Debian ships a compressed bzImage
/// (`vmlinuz`). This finds the compressed payload in the bzImage and inflates it: LZ4
/// (Debian's choice) natively, gzip/xz/zstd with their command-line tools.
public enum KernelExtractor {
  static let elfMagic: [UInt8] = [0x7F, 0x45, 0x4C, 0x46]

  public static func extractVmlinux(from bzImage: Data, runner: any CommandRunning) async throws
    -> Data
  {
    let bytes = [UInt8](bzImage)
    for offset in occurrences(of: [0x02, 0x21, 0x4C, 0x18], in: bytes) {
      if let elf = LZ4Legacy.decompress(bytes, from: offset), elf.starts(with: elfMagic) {
        return Data(elf)
      }
    }
    let tools: [(magic: [UInt8], command: String, arguments: [String])] = [
      ([0x1F, 0x8B, 0x08], "gzip", ["-dc"]), ([0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00], "xz", ["-dc"]),
      ([0x28, 0xB5, 0x2F, 0xFD], "zstd", ["-dcq"]),
    ]
    for tool in tools {
      for offset in occurrences(of: tool.magic, in: bytes) {
        // The tools' output is binary (CommandOutput is text): decompress through files.
        if let elf = try? await decompressToData(
          tool.command, tool.arguments, Array(bytes[offset...]), runner: runner),
          elf.starts(with: elfMagic)
        {
          return elf
        }
      }
    }
    throw ImageError("no compressed ELF kernel found in the bzImage")
  }

  static func decompressToData(
    _ tool: String, _ arguments: [String], _ input: [UInt8], runner: any CommandRunning
  )
    async throws -> Data
  {
    let directory = NSTemporaryDirectory() + "atelier-kernel-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    try Data(input).write(to: URL(fileURLWithPath: "\(directory)/in"))
    _ = await runner.probe(
      Command(
        "/bin/sh", ["-c", "\(tool) \(arguments.joined(separator: " ")) < in > out 2>/dev/null"],
        workingDirectory: directory))
    return try Data(contentsOf: URL(fileURLWithPath: "\(directory)/out"))
  }

  static func occurrences(of magic: [UInt8], in bytes: [UInt8]) -> [Int] {
    guard bytes.count >= magic.count else { return [] }
    var result: [Int] = []
    var index = 0
    while index <= bytes.count - magic.count {
      if bytes[index] == magic[0] && Array(bytes[index..<index + magic.count]) == magic {
        result.append(index)
      }
      index += 1
    }
    return result
  }
}

/// The LZ4 "legacy" frame the kernel uses: a magic number, then blocks of
/// (32-bit little-endian compressed size, LZ4 block) each inflating to at most 8 MiB.
enum LZ4Legacy {
  static let maxBlock = 8 << 20

  static func decompress(_ input: [UInt8], from start: Int) -> [UInt8]? {
    var position = start + 4
    var output: [UInt8] = []
    output.reserveCapacity(64 << 20)
    while position + 4 <= input.count {
      let size =
        Int(input[position]) | Int(input[position + 1]) << 8 | Int(input[position + 2]) << 16
        | Int(input[position + 3]) << 24
      // What follows the last block (the kernel's size field) does not look like a block.
      guard size > 0, size <= maxBlock + maxBlock / 255 + 16, position + 4 + size <= input.count
      else { break }
      guard decodeBlock(input, from: position + 4, count: size, into: &output) else { return nil }
      position += 4 + size
    }
    return output.isEmpty ? nil : output
  }

  /// One LZ4 block: sequences of literals and back-references.
  static func decodeBlock(_ input: [UInt8], from start: Int, count: Int, into output: inout [UInt8])
    -> Bool
  {
    var index = start
    let end = start + count
    while index < end {
      let token = input[index]
      index += 1
      var literals = Int(token >> 4)
      if literals == 15 {
        while index < end {
          let more = Int(input[index])
          index += 1
          literals += more
          if more != 255 { break }
        }
      }
      guard index + literals <= end else { return false }
      output.append(contentsOf: input[index..<index + literals])
      index += literals
      if index >= end { break }  // the last sequence has literals only
      guard index + 2 <= end else { return false }
      let offset = Int(input[index]) | Int(input[index + 1]) << 8
      index += 2
      var length = Int(token & 0x0F) + 4
      if token & 0x0F == 15 {
        while index < end {
          let more = Int(input[index])
          index += 1
          length += more
          if more != 255 { break }
        }
      }
      // Matches may reach back into earlier blocks (the legacy frame's blocks are linked).
      guard offset > 0, offset <= output.count else { return false }
      let from = output.count - offset
      for step in 0..<length { output.append(output[from + step]) }
    }
    return true
  }
}
