/// The per-sandbox agent key: 32 random bytes as 64 lowercase hex digits, which the manager
/// sends as `Authorization: Bearer <key>`. The guest gets it on a small read-only drive (not on
/// the kernel command line, which every guest user can read, nor in any host argv).
public enum AgentKey {
  public static let hexLength = 64

  public static func isValid(_ key: String) -> Bool {
    key.utf8.count == hexLength
      && key.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
  }

  /// A fresh key from the system's generator.
  public static func generate() -> String {
    var generator = SystemRandomNumberGenerator()
    let digits = Array("0123456789abcdef".utf8)
    var text: [UInt8] = []
    for _ in 0..<32 {
      let byte = UInt8.random(in: 0...255, using: &generator)
      text += [digits[Int(byte >> 4)], digits[Int(byte & 15)]]
    }
    return String(decoding: text, as: UTF8.self)
  }

  /// Compares a presented key with the real one in time that depends only on their lengths.
  public static func matches(_ presented: some Collection<UInt8>, _ key: some Collection<UInt8>)
    -> Bool
  {
    guard presented.count == key.count, !key.isEmpty else { return false }
    var difference: UInt8 = 0
    for (a, b) in zip(presented, key) { difference |= a ^ b }
    return difference == 0
  }
}

/// The key drive: `ATELIER-AGENT-KEY 1\n<hex>\n`, zero-padded to 4 KiB (one raw block device).
public enum AgentKeyDrive {
  public static let size = 4096
  public static let magic = "ATELIER-AGENT-KEY 1\n"
  /// Its file in the sandbox's folder (0600).
  public static let fileName = "agent-key.img"

  public static func contents(key: String) -> [UInt8] {
    var bytes = Array((magic + key + "\n").utf8)
    bytes += [UInt8](repeating: 0, count: size - bytes.count)
    return bytes
  }

  /// The key in a drive's first bytes, or nil when they are not a key drive.
  public static func key(in bytes: some Collection<UInt8>) -> String? {
    let magicBytes = Array(magic.utf8)
    guard bytes.count >= magicBytes.count + AgentKey.hexLength + 1,
      bytes.prefix(magicBytes.count).elementsEqual(magicBytes)
    else { return nil }
    let rest = bytes.dropFirst(magicBytes.count)
    let key = String(decoding: rest.prefix(AgentKey.hexLength), as: UTF8.self)
    guard AgentKey.isValid(key), rest.dropFirst(AgentKey.hexLength).first == 10 else { return nil }
    return key
  }
}
