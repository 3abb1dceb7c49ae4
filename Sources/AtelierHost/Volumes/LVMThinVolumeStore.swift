import Foundation
import Logging

/// Volumes as thin logical volumes in one LVM thin pool. Images are read-only thin volumes
/// (`image-<name>`); a sandbox disk is a thin snapshot of one, grown to the size asked for; a
/// snapshot's frozen disk is another thin snapshot. Thin snapshots share blocks with their
/// origin but do not depend on it, so any of them can be removed in any order.
///
/// LVM reserves LV names starting with "snapshot", so volume `snapshot-<id>` lives in LV
/// `frozen-<id>`; `list()` and every method take and give the manager's names.
public struct LVMThinVolumeStore: VolumeStore {
  public let name = "lvm"
  public let volumeGroup: String
  public let thinPool: String
  /// `clone` refuses while the pool's data or metadata usage is at or above this percentage.
  public let refuseAtPercent: Double
  let runner: any CommandRunning
  let logger: Logger
  /// Where device nodes live; tests point it at a folder of their own.
  let deviceDirectory: String

  public init(
    volumeGroup: String = "sandbox-vg", thinPool: String = "thin-pool",
    refuseAtPercent: Double = 90,
    runner: any CommandRunning = SystemCommandRunner(),
    logger: Logger = Logger(label: "atelier.volumes.lvm")
  ) {
    self.init(
      volumeGroup: volumeGroup, thinPool: thinPool,
      refuseAtPercent: refuseAtPercent, runner: runner, logger: logger, deviceDirectory: "/dev")
  }

  init(
    volumeGroup: String, thinPool: String, refuseAtPercent: Double,
    runner: any CommandRunning, logger: Logger, deviceDirectory: String
  ) {
    self.volumeGroup = volumeGroup
    self.thinPool = thinPool
    self.refuseAtPercent = refuseAtPercent
    self.runner = runner
    self.logger = logger
    self.deviceDirectory = deviceDirectory
  }

  // MARK: Names

  static let imagePrefix = "image-"
  static let snapshotPrefix = "snapshot-"
  static let frozenPrefix = "frozen-"

  /// The LV that holds volume `name`.
  static func logicalVolume(for name: String) -> String {
    name.hasPrefix(snapshotPrefix) ? frozenPrefix + name.dropFirst(snapshotPrefix.count) : name
  }

  /// The volume an LV holds.
  static func volume(for logicalVolume: String) -> String {
    logicalVolume.hasPrefix(frozenPrefix)
      ? snapshotPrefix + logicalVolume.dropFirst(frozenPrefix.count) : logicalVolume
  }

  /// What lvcreate accepts (and nothing that could be read as an option).
  static func isValidLogicalVolume(_ name: String) -> Bool {
    let reserved =
      ["_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage"]
      + ["_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata", "_imeta", "_iorig"]
    return !name.isEmpty && name.utf8.count <= 127 && name != "." && name != ".."
      && !name.hasPrefix("-") && !name.hasPrefix("snapshot") && !name.hasPrefix("pvmove")
      && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+_.-".contains($0)) }
      && !reserved.contains { name.contains($0) }
  }

  func checkedLogicalVolume(for name: String) throws -> String {
    let lv = Self.logicalVolume(for: name)
    guard Self.isValidLogicalVolume(lv) else {
      throw VolumeError("\(name) is not a valid LVM volume name")
    }
    return lv
  }

  func devicePath(_ logicalVolume: String) -> String {
    "\(deviceDirectory)/\(volumeGroup)/\(logicalVolume)"
  }

  func attachment(_ logicalVolume: String) -> DiskAttachment {
    DiskAttachment(path: devicePath(logicalVolume), format: .raw)
  }

  /// The LV behind a disk of this store: its path must be `/dev/<vg>/<lv>`.
  func logicalVolume(of disk: DiskAttachment) throws -> String {
    let prefix = "\(deviceDirectory)/\(volumeGroup)/"
    let lv = disk.path.hasPrefix(prefix) ? String(disk.path.dropFirst(prefix.count)) : ""
    guard disk.format == .raw, Self.isValidLogicalVolume(lv) else {
      throw VolumeError(
        "\(disk.path) (\(disk.format.rawValue)) is not a logical volume of \(volumeGroup): "
          + "LVM volumes clone only from \(prefix)<lv> (import images with importImage)")
    }
    return lv
  }

  // MARK: Commands

  /// C locale so numbers parse with a dot; LVM warns about every inherited descriptor, which
  /// would only clutter stderr.
  static let environment = ["LC_ALL": "C", "LVM_SUPPRESS_FD_WARNINGS": "1"]

  func command(_ tool: String, _ arguments: [String], timeout: Duration = .seconds(120))
    -> Command
  {
    Command(tool, arguments, environment: Self.environment, timeout: timeout)
  }

  /// Runs a command; a failure becomes a VolumeError that says what was being done and
  /// carries the command's stderr.
  @discardableResult
  func run(_ command: Command, _ doing: String) async throws -> String {
    do {
      return try await runner.run(command).stdout
    } catch let failure as CommandFailure {
      throw VolumeError("cannot \(doing): \(failure)")
    }
  }

  /// `lvs --noheadings` output as rows of fields, whatever the padding.
  static func rows(_ output: String) -> [[String]] {
    output.split(whereSeparator: \.isNewline).map { line in
      line.split(whereSeparator: \.isWhitespace).map(String.init)
    }.filter { !$0.isEmpty }
  }

  /// The names of all visible LVs in the volume group.
  func logicalVolumes() async throws -> [String] {
    let output = try await run(
      command("lvs", ["--noheadings", "-o", "lv_name", volumeGroup]),
      "list the volumes of \(volumeGroup)")
    return Self.rows(output).map { $0[0] }
  }

  /// The thin volume's mapped data (`lv_size` × `data_percent`; blocks it shares with its
  /// origin count too), or nil when lvs cannot tell.
  public func allocatedBytes(of name: String) async -> Int64? {
    guard let lv = try? checkedLogicalVolume(for: name) else { return nil }
    let output = await runner.probe(
      command(
        "lvs",
        [
          "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size,data_percent",
          "\(volumeGroup)/\(lv)",
        ]))
    guard output.exitCode == 0,
      let fields = Self.rows(output.stdout).first, fields.count == 2,
      let size = Double(fields[0]),
      let percent = Double(fields[1].replacingOccurrences(of: ",", with: "."))
    else { return nil }
    return Int64(size * percent / 100)
  }

  // MARK: Pool usage

  /// How full the thin pool is, in percent.
  public func poolUsage() async throws -> (dataPercent: Double, metadataPercent: Double) {
    let output = try await run(
      command(
        "lvs",
        ["--noheadings", "--nosuffix", "-o", "data_percent,metadata_percent", poolPath]),
      "read the usage of thin pool \(poolPath)")
    return try Self.parseUsage(output, pool: poolPath)
  }

  var poolPath: String { "\(volumeGroup)/\(thinPool)" }

  static func parseUsage(_ output: String, pool: String) throws -> (
    dataPercent: Double, metadataPercent: Double
  ) {
    // Some lvm builds print a decimal comma whatever LC_ALL says.
    let fields = rows(output).first?.map { Double($0.replacingOccurrences(of: ",", with: ".")) }
    guard let fields, fields.count == 2, let data = fields[0], let metadata = fields[1] else {
      throw VolumeError(
        "unexpected usage of thin pool \(pool) from lvs: \(output.debugDescription)")
    }
    return (data, metadata)
  }

  func checkPoolHasRoom() async throws {
    let usage = try await poolUsage()
    if usage.dataPercent >= refuseAtPercent || usage.metadataPercent >= refuseAtPercent {
      throw ThinPoolNearlyFull(
        pool: poolPath, dataPercent: usage.dataPercent, metadataPercent: usage.metadataPercent,
        thresholdPercent: refuseAtPercent)
    }
  }

  // MARK: Images

  /// Makes image `name` a read-only thin volume holding the raw disk `rawFile`, `sizeBytes`
  /// large (at least the file; default the file's size). An existing, complete image of the
  /// same size is kept unless `force`.
  @discardableResult
  public func importImage(
    name: String, from rawFile: String, sizeBytes: UInt64? = nil, force: Bool = false
  ) async throws -> DiskAttachment {
    let lv = Self.imagePrefix + name
    guard Self.isValidLogicalVolume(lv) else {
      throw VolumeError("\(name) is not a valid image name for LVM")
    }
    let fileSize: UInt64
    do {
      let attributes = try FileManager.default.attributesOfItem(atPath: rawFile)
      fileSize = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
    } catch {
      throw VolumeError("cannot read image disk \(rawFile): \(error)")
    }
    let size = sizeBytes ?? fileSize
    guard size >= fileSize, size > 0 else {
      throw VolumeError("image \(name) needs at least \(fileSize) bytes, not \(size)")
    }
    let output = try await run(
      command(
        "lvs",
        [
          "--noheadings", "--nosuffix", "--units", "b", "-o",
          "lv_name,lv_attr,lv_size,vg_extent_size",
          volumeGroup,
        ]),
      "list the volumes of \(volumeGroup)")
    if let row = Self.rows(output).first(where: { $0.first == lv }), row.count >= 4 {
      let existing = UInt64(row[2]) ?? 0
      let extent = max(UInt64(row[3]) ?? 1, 1)
      let rounded = (size + extent - 1) / extent * extent
      // Read-only is set last: a writable image is the remains of an interrupted import.
      let complete = Array(row[1]).count > 1 && Array(row[1])[1] == "r"
      if !force && complete && (existing == size || existing == rounded) {
        return attachment(lv)
      }
      try await run(
        command("lvremove", ["-f", "\(volumeGroup)/\(lv)"]), "remove old image volume \(lv)")
    }
    try await run(
      command("lvcreate", ["-V", "\(size)B", "-T", poolPath, "-n", lv, "-y"]),
      "create image volume \(lv)")
    do {
      // A new thin volume reads as zeros, so the zero blocks of the file need not be written
      // (nor allocated in the pool).
      try await run(
        command(
          "dd",
          ["if=\(rawFile)", "of=\(devicePath(lv))", "bs=4M", "conv=sparse,fsync", "status=none"],
          timeout: .seconds(3600)),
        "copy \(rawFile) onto \(devicePath(lv))")
      try await run(
        command("lvchange", ["-pr", "\(volumeGroup)/\(lv)"]), "make image volume \(lv) read-only")
    } catch {
      _ = await runner.probe(command("lvremove", ["-f", "\(volumeGroup)/\(lv)"]))
      throw error
    }
    return attachment(lv)
  }

  // MARK: VolumeStore

  public func clone(base: DiskAttachment, to name: String, minimumSizeBytes: UInt64) async throws
    -> DiskAttachment
  {
    let origin = try logicalVolume(of: base)
    let lv = try checkedLogicalVolume(for: name)
    try await checkPoolHasRoom()
    // -kn: a thin snapshot skips activation by default, and then it has no device node for
    // the VMM to open.
    try await run(
      command("lvcreate", ["-s", "-kn", "-n", lv, "\(volumeGroup)/\(origin)"]),
      "create volume \(lv) from \(origin)")
    do {
      let output = try await run(
        command(
          "lvs",
          [
            "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_attr,lv_size",
            "\(volumeGroup)/\(lv)",
          ]),
        "read volume \(lv)")
      guard let row = Self.rows(output).first, row.count == 2, let size = UInt64(row[1]) else {
        throw VolumeError("unexpected lvs output for \(lv): \(output.debugDescription)")
      }
      // The fifth attribute is the state: "a" when active.
      let attributes = Array(row[0])
      if attributes.count < 5 || attributes[4] != "a" {
        try await run(
          command("lvchange", ["-ay", "-K", "\(volumeGroup)/\(lv)"]), "activate volume \(lv)")
      }
      if size < minimumSizeBytes {
        try await run(
          command("lvextend", ["-L", "\(minimumSizeBytes)B", "\(volumeGroup)/\(lv)"]),
          "grow volume \(lv) to \(minimumSizeBytes) bytes")
      }
    } catch {
      _ = await runner.probe(command("lvremove", ["-f", "\(volumeGroup)/\(lv)"]))
      throw error
    }
    return attachment(lv)
  }

  /// Removing a volume that is not there is not an error.
  public func remove(_ name: String) async throws {
    let lv = try checkedLogicalVolume(for: name)
    do {
      try await runner.run(command("lvremove", ["-f", "\(volumeGroup)/\(lv)"]))
    } catch let failure as CommandFailure {
      // Asking again rather than matching lvremove's message: only an absent LV is fine.
      if let existing = try? await logicalVolumes(), !existing.contains(lv) { return }
      throw VolumeError("cannot remove volume \(lv): \(failure)")
    }
  }

  /// Sandbox and snapshot volumes: neither the pool nor the images.
  public func list() async throws -> [String] {
    try await logicalVolumes()
      .filter { $0 != thinPool && !$0.hasPrefix(Self.imagePrefix) }
      .map(Self.volume(for:))
      .sorted()
  }

  /// Thin snapshots need no overlay: the frozen disk is a snapshot of the running volume,
  /// which the VM keeps writing to (`next == previous`, nothing to switch).
  public func prepareFreeze(_ name: String, as snapshotName: String) async throws -> FreezePlan {
    let origin = try checkedLogicalVolume(for: name)
    let frozen = try checkedLogicalVolume(for: snapshotName)
    try await run(
      command("lvcreate", ["-s", "-kn", "-n", frozen, "\(volumeGroup)/\(origin)"]),
      "freeze volume \(origin) as \(frozen)")
    let current = attachment(origin)
    return FreezePlan(volume: name, frozen: attachment(frozen), next: current, previous: current)
  }

  public func commitFreeze(_ plan: FreezePlan) async throws {}

  public func compact(_ name: String) async {}

  public func abortFreeze(_ plan: FreezePlan) async {
    do {
      let frozen = try logicalVolume(of: plan.frozen)
      try await run(
        command("lvremove", ["-f", "\(volumeGroup)/\(frozen)"]), "remove frozen volume \(frozen)")
    } catch {
      logger.warning("abort freeze of \(plan.volume): \(error)")
    }
  }

  /// The device node, while the volume is active.
  public func disk(of name: String) -> DiskAttachment? {
    guard let lv = try? checkedLogicalVolume(for: name),
      FileManager.default.fileExists(atPath: devicePath(lv))
    else { return nil }
    return attachment(lv)
  }

  /// Every snapshot volume not in `keep`: a thin snapshot never backs another volume.
  public func collectGarbage(keep: Set<String>) async -> [String] {
    let names: [String]
    do { names = try await list() } catch {
      logger.warning("garbage collection: \(error)")
      return []
    }
    var removed: [String] = []
    for name in names where name.hasPrefix(Self.snapshotPrefix) && !keep.contains(name) {
      do {
        try await remove(name)
        removed.append(name)
      } catch {
        logger.warning("garbage collection: \(error)")
      }
    }
    return removed
  }
}

/// New volumes are refused while the thin pool is this full: a full pool stops every
/// sandbox's writes, not just the new one's.
public struct ThinPoolNearlyFull: Error, CustomStringConvertible, Sendable, Equatable {
  public var pool: String
  public var dataPercent: Double
  public var metadataPercent: Double
  public var thresholdPercent: Double

  public var description: String {
    func percent(_ value: Double) -> String { String(format: "%.1f%%", value) }
    return "thin pool \(pool) is nearly full (data \(percent(dataPercent)), metadata "
      + "\(percent(metadataPercent)); new volumes are refused at \(percent(thresholdPercent)))"
  }
}
