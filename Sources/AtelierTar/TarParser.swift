/// A streaming reader of tar archives (POSIX ustar, GNU long names, PAX extended headers), fed
/// with chunks as they arrive so nothing is held whole. It only parses: what may be written
/// where is `TarExtractor`'s business. Free of Foundation (the guest agent links it).

/// One member of an archive, with the GNU and PAX long names and sizes applied.
public struct TarHeader: Sendable, Equatable {
  public enum Kind: Sendable, Equatable {
    case file, hardLink, symlink, characterDevice, blockDevice, directory, fifo
    /// Anything else (GNU sparse files, volume labels…): its data is skipped.
    case other(UInt8)
  }
  /// The member's name as written in the archive (not checked: see `TarPath`).
  public var path: String
  public var kind: Kind
  /// All twelve mode bits as written, setuid included.
  public var mode: UInt32
  public var uid: Int64
  public var gid: Int64
  public var size: Int64
  /// Seconds since 1970.
  public var modificationTime: Int64
  /// A symlink's target, or the archive path a hard link names.
  public var linkTarget: String

  public init(
    path: String, kind: Kind, mode: UInt32 = 0o644, uid: Int64 = 0, gid: Int64 = 0,
    size: Int64 = 0, modificationTime: Int64 = 0, linkTarget: String = ""
  ) {
    self.path = path
    self.kind = kind
    self.mode = mode
    self.uid = uid
    self.gid = gid
    self.size = size
    self.modificationTime = modificationTime
    self.linkTarget = linkTarget
  }
}

public struct TarError: Error, CustomStringConvertible, Sendable, Equatable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}

/// What the parser reports, in archive order: a member, its data in pieces, its end.
public enum TarEvent {
  case member(TarHeader)
  case data(ArraySlice<UInt8>)
  case memberEnd
}

public struct TarParser {
  /// GNU long names and PAX headers are held in memory: more than this is refused.
  public static let metadataLimit = 1 << 20
  static let block = 512

  enum Pending {
    case longName, longLink, pax, globalPax
  }
  enum State {
    case header
    /// Data of a member (reported) or of a metadata record (kept), then padding.
    case data(remaining: Int64, padding: Int, metadata: Pending?)
    case padding(Int)
    case ended
  }

  var state = State.header
  var headerBuffer: [UInt8] = []
  var metadata: [UInt8] = []
  var longName: String?
  var longLink: String?
  var pax: [String: String] = [:]
  public private(set) var isAtEnd = false

  public init() {}

  /// Parses `bytes`, calling `handler` for each event they complete.
  public mutating func feed(_ bytes: [UInt8], _ handler: (TarEvent) throws -> Void) throws {
    var index = 0
    while index < bytes.count {
      switch state {
      case .ended:
        return  // Whatever follows the end marker (tar pads to a record size) is ignored.
      case .header:
        let take = min(Self.block - headerBuffer.count, bytes.count - index)
        headerBuffer += bytes[index..<index + take]
        index += take
        guard headerBuffer.count == Self.block else { continue }
        let block = headerBuffer
        headerBuffer = []
        try header(block, handler)
      case .data(let remaining, let padding, let pending):
        let take = Int(min(remaining, Int64(bytes.count - index)))
        let slice = bytes[index..<index + take]
        index += take
        if let pending {
          guard metadata.count + take <= Self.metadataLimit else {
            throw TarError("a long name or extended header is larger than 1 MiB")
          }
          metadata += slice
          if remaining - Int64(take) == 0 { finishMetadata(pending) }
        } else if take > 0 {
          try handler(.data(slice))
        }
        let left = remaining - Int64(take)
        if left == 0 {
          if pending == nil { try handler(.memberEnd) }
          state = padding > 0 ? .padding(padding) : .header
        } else {
          state = .data(remaining: left, padding: padding, metadata: pending)
        }
      case .padding(let count):
        let take = min(count, bytes.count - index)
        index += take
        state = count - take > 0 ? .padding(count - take) : .header
      }
    }
  }

  /// Checks that the archive ended between members (not cut short).
  public func finish() throws {
    switch state {
    case .ended: return
    case .header where headerBuffer.isEmpty: return  // some writers omit the end marker
    default: throw TarError("the archive ends in the middle of a member")
    }
  }

  mutating func header(_ block: [UInt8], _ handler: (TarEvent) throws -> Void) throws {
    if block.allSatisfy({ $0 == 0 }) {
      state = .ended
      isAtEnd = true
      return
    }
    guard Self.checksumMatches(block) else { throw TarError("a header's checksum is wrong") }
    let type = block[156]
    let size = try Self.number(block[124..<136], field: "size")
    guard size >= 0 else { throw TarError("a member has a negative size") }
    let padding = Int((Int64(Self.block) - size % Int64(Self.block)) % Int64(Self.block))
    let pending: Pending? =
      switch type {
      case UInt8(ascii: "L"): .longName
      case UInt8(ascii: "K"): .longLink
      case UInt8(ascii: "x"): .pax
      case UInt8(ascii: "g"): .globalPax
      default: nil
      }
    if let pending {
      guard size <= Self.metadataLimit else {
        throw TarError("a long name or extended header is larger than 1 MiB")
      }
      metadata = []
      if size == 0 { finishMetadata(pending) }
      state =
        size == 0 ? .header : .data(remaining: size, padding: padding, metadata: pending)
      return
    }
    var member = try Self.member(block, type: type, size: size)
    if let name = pax["path"] ?? longName { member.path = name }
    if let link = pax["linkpath"] ?? longLink { member.linkTarget = link }
    if let text = pax["size"] {
      guard let value = Int64(text), value >= 0 else { throw TarError("a PAX size is invalid") }
      member.size = value
    }
    if let text = pax["mtime"], let seconds = Int64(text.prefix { $0 != "." }) {
      member.modificationTime = seconds
    }
    longName = nil
    longLink = nil
    pax = [:]
    // Links, devices, folders and FIFOs carry no data, whatever their size field says.
    let hasData: Bool
    switch member.kind {
    case .file, .other: hasData = true
    default: hasData = false
    }
    if !hasData { member.size = 0 }
    try handler(.member(member))
    if member.size == 0 {
      try handler(.memberEnd)
      state = .header
    } else {
      let padding = Int((512 - member.size % 512) % 512)
      state = .data(remaining: member.size, padding: padding, metadata: nil)
    }
  }

  mutating func finishMetadata(_ pending: Pending) {
    let text = String(decoding: metadata.prefix { $0 != 0 }, as: UTF8.self)
    switch pending {
    case .longName: longName = text
    case .longLink: longLink = text
    case .pax: pax.merge(Self.paxRecords(metadata)) { _, new in new }
    case .globalPax: break  // defaults for later members: nothing we use
    }
    metadata = []
  }

  static func member(_ block: [UInt8], type: UInt8, size: Int64) throws -> TarHeader {
    let kind: TarHeader.Kind =
      switch type {
      case 0, UInt8(ascii: "0"), UInt8(ascii: "7"): .file
      case UInt8(ascii: "1"): .hardLink
      case UInt8(ascii: "2"): .symlink
      case UInt8(ascii: "3"): .characterDevice
      case UInt8(ascii: "4"): .blockDevice
      case UInt8(ascii: "5"): .directory
      case UInt8(ascii: "6"): .fifo
      default: .other(type)
      }
    var path = string(block[0..<100])
    // POSIX ustar keeps a prefix of long names at 345; GNU's "ustar  " keeps other fields there.
    if block[257..<263].elementsEqual(Array("ustar\0".utf8)) {
      let prefix = string(block[345..<500])
      if !prefix.isEmpty { path = prefix + "/" + path }
    }
    return TarHeader(
      path: path, kind: kind, mode: UInt32(truncatingIfNeeded: try number(block[100..<108])),
      uid: try number(block[108..<116]), gid: try number(block[116..<124]), size: size,
      modificationTime: try number(block[136..<148]), linkTarget: string(block[157..<257]))
  }

  /// The checksum is the sum of the header's bytes with its own field read as spaces
  /// (some old writers summed signed bytes; both are accepted).
  static func checksumMatches(_ block: [UInt8]) -> Bool {
    guard let stored = try? number(block[148..<156]) else { return false }
    var unsigned: Int64 = 0
    var signed: Int64 = 0
    for (index, byte) in block.enumerated() {
      let value = (148..<156).contains(index) ? UInt8(ascii: " ") : byte
      unsigned += Int64(value)
      signed += Int64(Int8(bitPattern: value))
    }
    return stored == unsigned || stored == signed
  }

  /// An octal field (space or NUL terminated), or GNU's base-256 (high bit set) for big values.
  static func number(_ field: ArraySlice<UInt8>, field name: String = "numeric") throws -> Int64 {
    guard let first = field.first else { return 0 }
    if first & 0x80 != 0 {
      guard first & 0x40 == 0 else { throw TarError("a negative base-256 \(name) field") }
      var value: Int64 = Int64(first & 0x3f)
      for byte in field.dropFirst() {
        guard value <= (Int64.max >> 8) else { throw TarError("a \(name) field overflows") }
        value = value << 8 | Int64(byte)
      }
      return value
    }
    var value: Int64 = 0
    var started = false
    for byte in field {
      if byte == 0 || (byte == UInt8(ascii: " ") && started) { break }
      if byte == UInt8(ascii: " ") { continue }
      guard (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(byte), value <= (Int64.max >> 3)
      else { throw TarError("a \(name) field is not octal") }
      started = true
      value = value << 3 | Int64(byte - UInt8(ascii: "0"))
    }
    return value
  }

  static func string(_ field: ArraySlice<UInt8>) -> String {
    String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
  }

  /// `"<length> <key>=<value>\n"` records.
  static func paxRecords(_ bytes: [UInt8]) -> [String: String] {
    var records: [String: String] = [:]
    var index = 0
    while index < bytes.count {
      guard let space = bytes[index...].firstIndex(of: UInt8(ascii: " ")),
        let length = Int(String(decoding: bytes[index..<space], as: UTF8.self)), length > 0,
        index + length <= bytes.count
      else { break }
      let record = bytes[(space + 1)..<(index + length)]
      if let equals = record.firstIndex(of: UInt8(ascii: "=")) {
        let key = String(decoding: record[record.startIndex..<equals], as: UTF8.self)
        var value = record[(equals + 1)...]
        if value.last == UInt8(ascii: "\n") { value = value.dropLast() }
        records[key] = String(decoding: value, as: UTF8.self)
      }
      index += length
    }
    return records
  }
}
