import Foundation

/// Writes a `newc` cpio archive, the format the Linux kernel unpacks as an initramfs.
/// Written here (not with cpio(1)) so entries can be root-owned and include device nodes
/// without root privileges or an extra host tool.
public struct CpioArchive {
  public enum Entry {
    case directory(path: String, mode: UInt32 = 0o755)
    case file(path: String, contents: Data, mode: UInt32 = 0o644)
    case symlink(path: String, target: String)
    case characterDevice(path: String, major: UInt32, minor: UInt32, mode: UInt32 = 0o600)
  }

  private(set) var data = Data()
  private var inode: UInt32 = 1

  public init() {}

  public mutating func append(_ entry: Entry) {
    switch entry {
    case .directory(let path, let mode):
      appendRecord(name: path, mode: 0o040000 | mode, body: Data(), nlink: 2)
    case .file(let path, let contents, let mode):
      appendRecord(name: path, mode: 0o100000 | mode, body: contents)
    case .symlink(let path, let target):
      appendRecord(name: path, mode: 0o120777, body: Data(target.utf8))
    case .characterDevice(let path, let major, let minor, let mode):
      appendRecord(name: path, mode: 0o020000 | mode, body: Data(), rdev: (major, minor))
    }
  }

  /// The finished archive (with its trailer).
  public func finished() -> Data {
    var copy = self
    copy.appendRecord(name: "TRAILER!!!", mode: 0, body: Data(), isTrailer: true)
    return copy.data
  }

  private mutating func appendRecord(
    name: String, mode: UInt32, body: Data, nlink: UInt32 = 1, rdev: (UInt32, UInt32) = (0, 0),
    isTrailer: Bool = false
  ) {
    let nameBytes = Data(name.utf8) + [0]
    let fields: [UInt32] = [
      isTrailer ? 0 : inode, mode, 0, 0, isTrailer ? 1 : nlink, 0, UInt32(body.count),
      0, 0, rdev.0, rdev.1, UInt32(nameBytes.count), 0,
    ]
    if !isTrailer { inode += 1 }
    var header = "070701"
    for field in fields { header += String(format: "%08X", field) }
    data.append(Data(header.utf8))
    data.append(nameBytes)
    pad()
    data.append(body)
    pad()
  }

  private mutating func pad() {
    while data.count % 4 != 0 { data.append(0) }
  }
}
