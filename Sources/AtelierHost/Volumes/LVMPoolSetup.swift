import Foundation

/// Prepares a host for `LVMThinVolumeStore`: backing storage, physical volume, volume group
/// and thin pool. Each step checks the current state first, so running it again (after a
/// reboot, say, when a loop file must be attached again) does only what is missing.
public struct LVMPoolSetup: Sendable {
  public enum Storage: Sendable, Equatable {
    /// A sparse file attached as a loop device (hosts without a spare disk).
    case loop(path: String, sizeBytes: UInt64)
    /// A block device given entirely to the pool.
    case device(path: String)
  }

  public struct PlannedStep: Sendable, Equatable, CustomStringConvertible {
    public var summary: String
    public var command: Command
    /// True when the host already has what this step makes; apply() skips it.
    public var done: Bool

    public var description: String { "\(done ? "done" : "todo"): \(summary) (\(command))" }
  }

  public let storage: Storage
  public let volumeGroup: String
  public let thinPool: String
  let runner: any CommandRunning

  public init(
    storage: Storage, volumeGroup: String = "sandbox-vg", thinPool: String = "thin-pool",
    runner: any CommandRunning = SystemCommandRunner()
  ) {
    self.storage = storage
    self.volumeGroup = volumeGroup
    self.thinPool = thinPool
    self.runner = runner
  }

  /// What apply() would do, checking the host but changing nothing (for `--dry-run`).
  public func plan() async -> [PlannedStep] {
    (try? await walk(apply: false)) ?? []
  }

  /// Runs the steps that are not done yet.
  public func apply() async throws {
    try await walk(apply: true)
  }

  /// Stands for the loop device in a dry run, before the file is attached.
  static let unattachedLoopDevice = "/dev/loopN"

  /// One pass over the steps. With `apply` false no command that changes the host runs, and
  /// nothing throws.
  @discardableResult
  func walk(apply: Bool) async throws -> [PlannedStep] {
    var steps: [PlannedStep] = []
    @discardableResult
    func step(_ summary: String, _ command: Command, done: Bool) async throws -> CommandOutput? {
      steps.append(PlannedStep(summary: summary, command: command, done: done))
      guard apply, !done else { return nil }
      return try await runner.run(command)
    }

    let device: String
    switch storage {
    case .loop(let path, let sizeBytes):
      let exists = FileManager.default.fileExists(atPath: path)
      if apply && !exists {
        let parent = (path as NSString).deletingLastPathComponent
        if !parent.isEmpty {
          try FileManager.default.createDirectory(
            atPath: parent, withIntermediateDirectories: true)
        }
      }
      try await step(
        "create the sparse pool file \(path)", Command("truncate", ["-s", "\(sizeBytes)", path]),
        done: exists)
      let attached = exists ? await loopDevice(of: path) : nil
      let output = try await step(
        "attach \(path) as a loop device", Command("losetup", ["--find", "--show", path]),
        done: attached != nil)
      if let attached {
        device = attached
      } else if let output {
        device = output.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
      } else {
        device = Self.unattachedLoopDevice
      }
    case .device(let path):
      device = path
    }

    let groupExists = await volumeGroups().contains(volumeGroup)
    var physicalVolume = false
    var pvSummary = "make \(device) an LVM physical volume"
    if !groupExists && device != Self.unattachedLoopDevice {
      switch await membership(of: device) {
      case .notPhysicalVolume: break
      case .free: physicalVolume = true
      case .member(let other) where other == volumeGroup: physicalVolume = true
      case .member(let other):
        // Never take a disk from another group; say so in a dry run, stop in a real one.
        guard !apply else {
          throw VolumeError("\(device) already belongs to volume group \(other)")
        }
        pvSummary += " (it belongs to volume group \(other): apply will refuse)"
      }
    }
    try await step(
      pvSummary, lvm("pvcreate", [device]), done: groupExists || physicalVolume)
    try await step(
      "create volume group \(volumeGroup)", lvm("vgcreate", [volumeGroup, device]),
      done: groupExists)

    let volumes = groupExists ? await logicalVolumes() : []
    let pool = volumes.first { $0.name == thinPool }
    var poolSummary = "create thin pool \(volumeGroup)/\(thinPool) on 90% of the free space"
    if let pool, pool.attributes.first != "t" {
      guard !apply else {
        throw VolumeError("\(volumeGroup)/\(thinPool) exists but is not a thin pool")
      }
      poolSummary += " (\(volumeGroup)/\(thinPool) exists but is not a thin pool)"
    }
    try await step(
      poolSummary,
      lvm("lvcreate", ["-l", "90%FREE", "-T", "\(volumeGroup)/\(thinPool)"]),
      done: pool?.attributes.first == "t")
    // After a reboot the group may come back inactive; a new group's volumes are active.
    let inactive = volumes.contains {
      Array($0.attributes).count < 5 || Array($0.attributes)[4] != "a"
    }
    try await step(
      "activate the volumes of \(volumeGroup)", lvm("vgchange", ["-ay", volumeGroup]),
      done: !inactive)
    return steps
  }

  func lvm(_ tool: String, _ arguments: [String]) -> Command {
    Command(tool, arguments, environment: LVMThinVolumeStore.environment)
  }

  /// The loop device `path` is attached to, if any (`losetup -j` prints
  /// `/dev/loop0: [2049]:131 (/path)`).
  func loopDevice(of path: String) async -> String? {
    let output = await runner.probe(Command("losetup", ["-j", path]))
    guard output.exitCode == 0,
      let line = output.stdout.split(whereSeparator: \.isNewline).first,
      let colon = line.firstIndex(of: ":")
    else { return nil }
    let device = line[..<colon].trimmingCharacters(in: .whitespaces)
    return device.isEmpty ? nil : device
  }

  func volumeGroups() async -> [String] {
    let output = await runner.probe(lvm("vgs", ["--noheadings", "-o", "vg_name"]))
    guard output.exitCode == 0 else { return [] }
    return LVMThinVolumeStore.rows(output.stdout).map { $0[0] }
  }

  enum Membership: Equatable {
    case notPhysicalVolume
    case free
    case member(String)
  }

  func membership(of device: String) async -> Membership {
    let output = await runner.probe(lvm("pvs", ["--noheadings", "-o", "vg_name", device]))
    guard output.exitCode == 0 else { return .notPhysicalVolume }
    return LVMThinVolumeStore.rows(output.stdout).first?.first.map(Membership.member) ?? .free
  }

  func logicalVolumes() async -> [(name: String, attributes: String)] {
    let output = await runner.probe(
      lvm("lvs", ["--noheadings", "-o", "lv_name,lv_attr", volumeGroup]))
    guard output.exitCode == 0 else { return [] }
    return LVMThinVolumeStore.rows(output.stdout).compactMap {
      $0.count == 2 ? ($0[0], $0[1]) : nil
    }
  }
}
