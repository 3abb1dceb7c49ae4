import Foundation
import Synchronization
import Testing

@testable import AtelierHost

/// Answers commands from a script (the longest matching prefix of the argv wins; a rule with
/// several answers gives them in turn, then repeats the last) and records every command.
/// Unscripted commands succeed with no output.
final class LVMRecordingRunner: CommandRunning {
  struct Rule {
    var prefix: [String]
    var answers: [Result<String, CommandFailure>]
  }
  private let state = Mutex<(rules: [Rule], commands: [Command])>(([], []))

  func on(_ prefix: String..., stdout: String...) {
    state.withLock { $0.rules.append(Rule(prefix: prefix, answers: stdout.map { .success($0) })) }
  }

  func fail(_ prefix: String..., exitCode: Int32 = 5, stderr: String) {
    let failure = CommandFailure(
      command: prefix.joined(separator: " "), exitCode: exitCode, stderr: stderr)
    state.withLock { $0.rules.append(Rule(prefix: prefix, answers: [.failure(failure)])) }
  }

  var commands: [Command] { state.withLock { $0.commands } }
  /// Each recorded command as one argv line.
  var lines: [String] { commands.map { ([$0.executable] + $0.arguments).joined(separator: " ") } }
  /// The recorded commands whose program is one of `programs`.
  func lines(of programs: String...) -> [String] {
    zip(commands, lines).filter { programs.contains($0.0.executable) }.map(\.1)
  }

  func run(_ command: Command) async throws -> CommandOutput {
    let argv = [command.executable] + command.arguments
    let answer: Result<String, CommandFailure>? = state.withLock { state in
      state.commands.append(command)
      // The longest prefix wins; of equal ones, the rule added last.
      var chosen: Int?
      for (index, rule) in state.rules.enumerated()
      where rule.prefix.elementsEqual(argv.prefix(rule.prefix.count))
        && rule.prefix.count >= chosen.map({ state.rules[$0].prefix.count }) ?? 0
      {
        chosen = index
      }
      guard let index = chosen else { return nil }
      let answer = state.rules[index].answers.first
      if state.rules[index].answers.count > 1 { state.rules[index].answers.removeFirst() }
      return answer
    }
    switch answer {
    case .none: return CommandOutput(exitCode: 0, stdout: "", stderr: "")
    case .success(let stdout)?: return CommandOutput(exitCode: 0, stdout: stdout, stderr: "")
    case .failure(let failure)?: throw failure
    }
  }
}

@Suite struct LVMTests {
  /// The disk size the manager asks for in these tests.
  static let diskSize: UInt64 = 10 << 30
  static let usage = ["lvs", "--noheadings", "--nosuffix", "-o", "data_percent,metadata_percent"]

  func store(_ runner: LVMRecordingRunner, deviceDirectory: String = "/dev") -> LVMThinVolumeStore {
    LVMThinVolumeStore(
      volumeGroup: "sandbox-vg", thinPool: "thin-pool",
      refuseAtPercent: 90, runner: runner, logger: .init(label: "test"),
      deviceDirectory: deviceDirectory)
  }

  func image(_ name: String) -> DiskAttachment {
    DiskAttachment(path: "/dev/sandbox-vg/image-\(name)", format: .raw)
  }

  /// A pool with room, a new snapshot that is active and 1 GiB large.
  func cloneScript(_ runner: LVMRecordingRunner, attributes: String = "Vwi-a-tz--") {
    runner.on("lvs", "--noheadings", "--nosuffix", "-o", stdout: "   12.50   3.07\n")
    runner.on(
      "lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_attr,lv_size",
      stdout: "  \(attributes) 1073741824\n")
  }

  @Test func cloneSnapshotsTheBaseWithActivationSkipOffAndGrowsIt() async throws {
    let runner = LVMRecordingRunner()
    cloneScript(runner)
    let disk = try await store(runner).clone(
      base: image("tiny"), to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    #expect(disk == DiskAttachment(path: "/dev/sandbox-vg/sandbox-abc", format: .raw))
    #expect(
      runner.lines == [
        "lvs --noheadings --nosuffix -o data_percent,metadata_percent sandbox-vg/thin-pool",
        "lvcreate -s -kn -n sandbox-abc sandbox-vg/image-tiny",
        "lvs --noheadings --nosuffix --units b -o lv_attr,lv_size sandbox-vg/sandbox-abc",
        "lvextend -L 10737418240B sandbox-vg/sandbox-abc",
      ])
    // Numbers are parsed in the C locale whatever the host's.
    #expect(runner.commands.allSatisfy { $0.environment["LC_ALL"] == "C" })

    // A size asked for one clone, larger than the store's.
    let asked = LVMRecordingRunner()
    cloneScript(asked)
    _ = try await store(asked).clone(
      base: image("tiny"), to: "sandbox-big", minimumSizeBytes: 20 << 30)
    #expect(asked.lines.last == "lvextend -L 21474836480B sandbox-vg/sandbox-big")
  }

  @Test func cloneActivatesAnInactiveSnapshotAndKeepsALargeOneAsItIs() async throws {
    let runner = LVMRecordingRunner()
    runner.on("lvs", "--noheadings", "--nosuffix", "-o", stdout: "  0.00  1.00\n")
    runner.on(
      "lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_attr,lv_size",
      stdout: "  Vwi---tz-k  21474836480\n")
    _ = try await store(runner).clone(
      base: image("tiny"), to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    #expect(runner.lines(of: "lvchange", "lvextend") == ["lvchange -ay -K sandbox-vg/sandbox-abc"])
  }

  @Test func cloneOfASnapshotUsesItsFrozenVolume() async throws {
    let runner = LVMRecordingRunner()
    cloneScript(runner)
    let frozen = DiskAttachment(path: "/dev/sandbox-vg/frozen-snap1", format: .raw)
    _ = try await store(runner).clone(
      base: frozen, to: "sandbox-new", minimumSizeBytes: Self.diskSize)
    #expect(
      runner.lines(of: "lvcreate") == ["lvcreate -s -kn -n sandbox-new sandbox-vg/frozen-snap1"])
  }

  @Test(arguments: [
    DiskAttachment(path: "/var/lib/atelier/images/tiny/rootfs.img", format: .raw),
    DiskAttachment(path: "/dev/other-vg/image-tiny", format: .raw),
    DiskAttachment(path: "/dev/sandbox-vg/image-tiny", format: .qcow2),
    DiskAttachment(path: "/dev/sandbox-vg/nested/lv", format: .raw),
    DiskAttachment(path: "/dev/sandbox-vg/", format: .raw),
    DiskAttachment(path: "/dev/sandbox-vg/-y", format: .raw),
  ])
  func cloneRejectsABaseThatIsNotAVolumeOfTheGroup(base: DiskAttachment) async throws {
    let runner = LVMRecordingRunner()
    cloneScript(runner)
    let error = await #expect(throws: VolumeError.self) {
      try await store(runner).clone(base: base, to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    }
    #expect(error?.message.contains("not a logical volume of sandbox-vg") == true)
    #expect(runner.commands.isEmpty)
  }

  @Test func cloneRefusesWhenThePoolIsNearlyFull() async throws {
    let runner = LVMRecordingRunner()
    runner.on("lvs", "--noheadings", "--nosuffix", "-o", stdout: "  90.00   40.25\n")
    let error = await #expect(throws: ThinPoolNearlyFull.self) {
      try await store(runner).clone(
        base: image("tiny"), to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    }
    #expect(
      error
        == ThinPoolNearlyFull(
          pool: "sandbox-vg/thin-pool", dataPercent: 90, metadataPercent: 40.25,
          thresholdPercent: 90))
    #expect(error?.description.contains("nearly full (data 90.0%, metadata 40.2%") == true)
    #expect(runner.lines(of: "lvcreate").isEmpty)
  }

  @Test func cloneFailureCarriesStderrAndLeavesNothing() async throws {
    let runner = LVMRecordingRunner()
    cloneScript(runner)
    runner.fail("lvextend", stderr: "  Insufficient free space: 2560 extents needed\n")
    let error = await #expect(throws: VolumeError.self) {
      try await store(runner).clone(
        base: image("tiny"), to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    }
    #expect(error?.message.contains("Insufficient free space: 2560 extents needed") == true)
    #expect(runner.lines.last == "lvremove -f sandbox-vg/sandbox-abc")

    let failing = LVMRecordingRunner()
    cloneScript(failing)
    failing.fail(
      "lvcreate",
      stderr: "  Logical Volume \"sandbox-abc\" already exists in volume group \"sandbox-vg\"\n")
    let exists = await #expect(throws: VolumeError.self) {
      try await store(failing).clone(
        base: image("tiny"), to: "sandbox-abc", minimumSizeBytes: Self.diskSize)
    }
    #expect(exists?.message.contains("already exists in volume group") == true)
    // Someone else's volume is not removed.
    #expect(failing.lines(of: "lvremove").isEmpty)
  }

  @Test func removeRunsLvremoveAndIgnoresAnAbsentVolume() async throws {
    let runner = LVMRecordingRunner()
    try await store(runner).remove("sandbox-abc")
    try await store(runner).remove("snapshot-snap1")
    #expect(
      runner.lines == ["lvremove -f sandbox-vg/sandbox-abc", "lvremove -f sandbox-vg/frozen-snap1"])

    let absent = LVMRecordingRunner()
    absent.fail("lvremove", stderr: "  Failed to find logical volume \"sandbox-vg/sandbox-gone\"\n")
    absent.on("lvs", "--noheadings", "-o", "lv_name", stdout: "  thin-pool\n  image-tiny\n")
    try await store(absent).remove("sandbox-gone")

    let busy = LVMRecordingRunner()
    busy.fail("lvremove", stderr: "  Logical volume sandbox-vg/sandbox-abc in use.\n")
    busy.on("lvs", "--noheadings", "-o", "lv_name", stdout: "  sandbox-abc\n  thin-pool\n")
    let error = await #expect(throws: VolumeError.self) {
      try await store(busy).remove("sandbox-abc")
    }
    #expect(error?.message.contains("in use") == true)
  }

  @Test func listParsesPaddedLvsOutputAndLeavesOutThePoolAndImages() async throws {
    let runner = LVMRecordingRunner()
    runner.on(
      "lvs", "--noheadings", "-o", "lv_name",
      stdout: """
          frozen-k3j9x0aa2bcd   
          image-dev-base        
          image-tiny            
          sandbox-a1b2c3d4e5f6  
        \tsandbox-zz99yy88xx77
          thin-pool             

        """)
    let names = try await store(runner).list()
    #expect(names == ["sandbox-a1b2c3d4e5f6", "sandbox-zz99yy88xx77", "snapshot-k3j9x0aa2bcd"])
    #expect(runner.lines == ["lvs --noheadings -o lv_name sandbox-vg"])
  }

  @Test func freezeIsAThinSnapshotAndTheVMKeepsItsDisk() async throws {
    let runner = LVMRecordingRunner()
    let volumes = store(runner)
    let plan = try await volumes.prepareFreeze("sandbox-abc", as: "snapshot-snap1")
    #expect(runner.lines == ["lvcreate -s -kn -n frozen-snap1 sandbox-vg/sandbox-abc"])
    #expect(plan.volume == "sandbox-abc")
    #expect(plan.frozen == DiskAttachment(path: "/dev/sandbox-vg/frozen-snap1", format: .raw))
    #expect(plan.previous == DiskAttachment(path: "/dev/sandbox-vg/sandbox-abc", format: .raw))
    // Nothing to switch: the manager skips switchDisk when next == previous.
    #expect(plan.next == plan.previous)

    try await volumes.commitFreeze(plan)
    await volumes.compact("sandbox-abc")
    #expect(runner.commands.count == 1)

    await volumes.abortFreeze(plan)
    #expect(runner.lines.last == "lvremove -f sandbox-vg/frozen-snap1")
  }

  @Test func freezeFailureCarriesStderr() async throws {
    let runner = LVMRecordingRunner()
    runner.fail(
      "lvcreate",
      stderr:
        "  Cannot create new thin volume, free space in thin pool sandbox-vg/thin-pool reached threshold.\n"
    )
    let error = await #expect(throws: VolumeError.self) {
      try await store(runner).prepareFreeze("sandbox-abc", as: "snapshot-snap1")
    }
    #expect(error?.message.contains("reached threshold") == true)
  }

  @Test func garbageCollectionRemovesEverySnapshotNotKept() async throws {
    let runner = LVMRecordingRunner()
    runner.on(
      "lvs", "--noheadings", "-o", "lv_name",
      stdout:
        "  frozen-drop1\n  frozen-keep1\n  frozen-drop2\n  image-tiny\n  sandbox-abc\n  thin-pool\n"
    )
    let removed = await store(runner).collectGarbage(keep: ["snapshot-keep1"])
    #expect(removed == ["snapshot-drop1", "snapshot-drop2"])
    #expect(
      runner.lines(of: "lvremove") == [
        "lvremove -f sandbox-vg/frozen-drop1", "lvremove -f sandbox-vg/frozen-drop2",
      ])
  }

  @Test func poolUsageParsesWhateverThePadding() async throws {
    let runner = LVMRecordingRunner()
    runner.on("lvs", "--noheadings", "--nosuffix", "-o", stdout: "    45.67     12.01  \n")
    let usage = try await store(runner).poolUsage()
    #expect(usage.dataPercent == 45.67)
    #expect(usage.metadataPercent == 12.01)
    #expect(
      runner.lines == [
        "lvs --noheadings --nosuffix -o data_percent,metadata_percent sandbox-vg/thin-pool"
      ])

    #expect(try LVMThinVolumeStore.parseUsage("\t0,00\t 1,5\n", pool: "p") == (0, 1.5))
    #expect(throws: VolumeError.self) { try LVMThinVolumeStore.parseUsage("\n", pool: "p") }
    #expect(throws: VolumeError.self) { try LVMThinVolumeStore.parseUsage("  12.0\n", pool: "p") }

    let missing = LVMRecordingRunner()
    missing.fail("lvs", stderr: "  Volume group \"sandbox-vg\" not found\n")
    let error = await #expect(throws: VolumeError.self) { try await store(missing).poolUsage() }
    #expect(error?.message.contains("Volume group \"sandbox-vg\" not found") == true)
  }

  @Test func snapshotSizeIsTheThinVolumesMappedData() async throws {
    let runner = LVMRecordingRunner()
    runner.on(
      "lvs", "--noheadings", "--nosuffix", "--units", "b", "-o", "lv_size,data_percent",
      stdout: "  10737418240   2,50\n")
    #expect(await store(runner).allocatedBytes(of: "snapshot-abc") == 268_435_456)
    #expect(
      runner.lines == [
        "lvs --noheadings --nosuffix --units b -o lv_size,data_percent sandbox-vg/frozen-abc"
      ])
    let missing = LVMRecordingRunner()
    missing.fail("lvs", stderr: "  Failed to find logical volume\n")
    #expect(await store(missing).allocatedBytes(of: "snapshot-abc") == nil)
  }

  @Test func volumeNamesStayClearOfLVMReservedNames() async throws {
    #expect(LVMThinVolumeStore.logicalVolume(for: "snapshot-abc") == "frozen-abc")
    #expect(LVMThinVolumeStore.volume(for: "frozen-abc") == "snapshot-abc")
    #expect(LVMThinVolumeStore.logicalVolume(for: "sandbox-abc") == "sandbox-abc")
    for bad in [
      "", "-f", "snapshot", "pvmove0", "a b", "x_tmeta", "a/b", String(repeating: "a", count: 128),
    ] {
      #expect(!LVMThinVolumeStore.isValidLogicalVolume(bad), "\(bad)")
    }
    let runner = LVMRecordingRunner()
    await #expect(throws: VolumeError.self) { try await store(runner).remove("--all") }
    #expect(runner.commands.isEmpty)
  }

  @Test func diskOfIsTheDeviceNodeWhileItExists() throws {
    let directory = NSTemporaryDirectory() + "atelier-lvm-\(UUID().uuidString)"
    try FileManager.default.createDirectory(
      atPath: "\(directory)/sandbox-vg", withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    _ = FileManager.default.createFile(
      atPath: "\(directory)/sandbox-vg/frozen-snap1", contents: nil)
    let volumes = store(LVMRecordingRunner(), deviceDirectory: directory)
    #expect(
      volumes.disk(of: "snapshot-snap1")
        == DiskAttachment(path: "\(directory)/sandbox-vg/frozen-snap1", format: .raw))
    #expect(volumes.disk(of: "sandbox-gone") == nil)
  }

  // MARK: Images

  func rawFile(bytes: Int) throws -> String {
    let path = NSTemporaryDirectory() + "atelier-lvm-\(UUID().uuidString).img"
    try Data(count: bytes).write(to: URL(fileURLWithPath: path))
    return path
  }

  static let imageListing = [
    "lvs", "--noheadings", "--nosuffix", "--units", "b", "-o",
    "lv_name,lv_attr,lv_size,vg_extent_size",
  ]

  @Test func importImageCreatesCopiesAndMakesReadOnly() async throws {
    let file = try rawFile(bytes: 3 << 20)
    defer { try? FileManager.default.removeItem(atPath: file) }
    let runner = LVMRecordingRunner()
    runner.on("lvs", stdout: "  thin-pool twi-aotz-- 8589934592 4194304\n")
    let disk = try await store(runner).importImage(name: "tiny", from: file, sizeBytes: 64 << 20)
    #expect(disk == image("tiny"))
    #expect(
      runner.lines == [
        "lvs --noheadings --nosuffix --units b -o lv_name,lv_attr,lv_size,vg_extent_size sandbox-vg",
        "lvcreate -V 67108864B -T sandbox-vg/thin-pool -n image-tiny -y",
        "dd if=\(file) of=/dev/sandbox-vg/image-tiny bs=4M conv=sparse,fsync status=none",
        "lvchange -pr sandbox-vg/image-tiny",
      ])
  }

  @Test func importImageKeepsAnIdenticalImageUnlessForced() async throws {
    let file = try rawFile(bytes: 3 << 20)
    defer { try? FileManager.default.removeItem(atPath: file) }
    // 3 MiB rounds up to one 4 MiB extent.
    let listing =
      "  image-tiny   Vri-a-tz--   4194304  4194304\n  thin-pool twi-aotz-- 8589934592 4194304\n"
    let runner = LVMRecordingRunner()
    runner.on("lvs", stdout: listing)
    _ = try await store(runner).importImage(name: "tiny", from: file)
    #expect(runner.lines.count == 1)

    let forced = LVMRecordingRunner()
    forced.on("lvs", stdout: listing)
    _ = try await store(forced).importImage(name: "tiny", from: file, force: true)
    #expect(
      forced.lines.dropFirst() == [
        "lvremove -f sandbox-vg/image-tiny",
        "lvcreate -V 3145728B -T sandbox-vg/thin-pool -n image-tiny -y",
        "dd if=\(file) of=/dev/sandbox-vg/image-tiny bs=4M conv=sparse,fsync status=none",
        "lvchange -pr sandbox-vg/image-tiny",
      ])

    // Another size, or an import that never reached read-only, is done again.
    for existing in [
      "  image-tiny Vri-a-tz-- 8388608 4194304\n", "  image-tiny Vwi-a-tz-- 4194304 4194304\n",
    ] {
      let again = LVMRecordingRunner()
      again.on("lvs", stdout: existing)
      _ = try await store(again).importImage(name: "tiny", from: file)
      #expect(
        again.lines(of: "lvremove", "lvcreate") == [
          "lvremove -f sandbox-vg/image-tiny",
          "lvcreate -V 3145728B -T sandbox-vg/thin-pool -n image-tiny -y",
        ])
    }
  }

  @Test func importImageFailureRemovesThePartialVolume() async throws {
    let file = try rawFile(bytes: 1 << 20)
    defer { try? FileManager.default.removeItem(atPath: file) }
    let runner = LVMRecordingRunner()
    runner.fail(
      "dd", exitCode: 1,
      stderr: "dd: error writing '/dev/sandbox-vg/image-tiny': No space left on device\n")
    let error = await #expect(throws: VolumeError.self) {
      try await store(runner).importImage(name: "tiny", from: file)
    }
    #expect(error?.message.contains("No space left on device") == true)
    #expect(runner.lines.last == "lvremove -f sandbox-vg/image-tiny")

    await #expect(throws: VolumeError.self) {
      try await store(LVMRecordingRunner()).importImage(name: "tiny", from: file, sizeBytes: 4096)
    }
    await #expect(throws: VolumeError.self) {
      try await store(LVMRecordingRunner()).importImage(name: "tiny", from: file + ".missing")
    }
  }

  // MARK: Pool set-up

  func temporaryPath() -> String {
    NSTemporaryDirectory() + "atelier-lvm-\(UUID().uuidString)/pool.img"
  }

  static let checks: Set<String> = ["vgs", "pvs", "lvs"]

  /// Everything but the state checks.
  func changes(_ runner: LVMRecordingRunner) -> [String] {
    zip(runner.commands, runner.lines).filter {
      !Self.checks.contains($0.0.executable) && $0.0.arguments.first != "-j"
    }.map(\.1)
  }

  @Test func poolSetupOnAFreshHostPlansAndRunsEveryStep() async throws {
    let path = temporaryPath()
    defer {
      try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent)
    }
    let runner = LVMRecordingRunner()
    runner.fail("vgs", stderr: "")  // no volume group at all
    runner.fail("pvs", stderr: "  Failed to find physical volume \"/dev/loop7\".\n")
    runner.on("losetup", "--find", stdout: "/dev/loop7\n")
    let setup = LVMPoolSetup(storage: .loop(path: path, sizeBytes: 20 << 30), runner: runner)

    let plan = await setup.plan()
    #expect(
      plan.map { "\($0.done) \($0.command)" } == [
        "false truncate -s 21474836480 \(path)",
        "false losetup --find --show \(path)",
        "false pvcreate /dev/loopN",
        "false vgcreate sandbox-vg /dev/loopN",
        "false lvcreate -l 90%FREE -T sandbox-vg/thin-pool",
        "true vgchange -ay sandbox-vg",
      ])
    #expect(changes(runner).isEmpty)

    try await setup.apply()
    #expect(
      changes(runner) == [
        "truncate -s 21474836480 \(path)",
        "losetup --find --show \(path)",
        "pvcreate /dev/loop7",
        "vgcreate sandbox-vg /dev/loop7",
        "lvcreate -l 90%FREE -T sandbox-vg/thin-pool",
      ])
    // The folder of the pool file is made for truncate.
    #expect(FileManager.default.fileExists(atPath: (path as NSString).deletingLastPathComponent))
  }

  @Test func poolSetupOnAPreparedHostRunsNothing() async throws {
    let path = temporaryPath()
    let folder = (path as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let runner = LVMRecordingRunner()
    runner.on("losetup", "-j", stdout: "/dev/loop7: [2049]:393218 (\(path))\n")
    runner.on("vgs", stdout: "  debian-vg  \n  sandbox-vg \n")
    runner.on(
      "lvs",
      stdout:
        "  image-tiny     Vri-a-tz--\n  sandbox-abc    Vwi-aotz--\n  thin-pool      twi-aotz--\n")
    let setup = LVMPoolSetup(storage: .loop(path: path, sizeBytes: 20 << 30), runner: runner)

    let plan = await setup.plan()
    #expect(plan.count == 6)
    #expect(plan.allSatisfy { $0.done }, "\(plan)")
    #expect(plan[2].command.arguments == ["/dev/loop7"])
    try await setup.apply()
    #expect(changes(runner).isEmpty, "\(runner.lines)")
  }

  @Test func poolSetupAfterARebootReattachesAndActivates() async throws {
    let path = temporaryPath()
    let folder = (path as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    let runner = LVMRecordingRunner()
    runner.on("losetup", "-j", stdout: "")
    runner.on("losetup", "--find", stdout: "/dev/loop3\n")
    runner.on("vgs", stdout: "  sandbox-vg\n")
    runner.on("lvs", stdout: "  image-tiny Vri---tz--\n  thin-pool twi---tz--\n")
    try await LVMPoolSetup(storage: .loop(path: path, sizeBytes: 1 << 30), runner: runner).apply()
    #expect(changes(runner) == ["losetup --find --show \(path)", "vgchange -ay sandbox-vg"])
  }

  @Test func poolSetupOnADevice() async throws {
    let fresh = LVMRecordingRunner()
    fresh.on("vgs", stdout: "  debian-vg\n")
    fresh.fail("pvs", stderr: "  Failed to find physical volume \"/dev/vdb\".\n")
    try await LVMPoolSetup(storage: .device(path: "/dev/vdb"), runner: fresh).apply()
    #expect(
      changes(fresh) == [
        "pvcreate /dev/vdb", "vgcreate sandbox-vg /dev/vdb",
        "lvcreate -l 90%FREE -T sandbox-vg/thin-pool",
      ])

    // A physical volume left by an interrupted run is kept.
    let halfway = LVMRecordingRunner()
    halfway.on("pvs", stdout: "    \n")
    try await LVMPoolSetup(storage: .device(path: "/dev/vdb"), runner: halfway).apply()
    #expect(changes(halfway).first == "vgcreate sandbox-vg /dev/vdb")

    // A disk of another group is never taken.
    let taken = LVMRecordingRunner()
    taken.on("pvs", stdout: "  debian-vg\n")
    let setup = LVMPoolSetup(storage: .device(path: "/dev/vdb"), runner: taken)
    #expect(await setup.plan().first?.summary.contains("belongs to volume group debian-vg") == true)
    await #expect(throws: VolumeError.self) { try await setup.apply() }
    #expect(changes(taken).isEmpty)
  }
}

extension LVMTests {
  /// The real thing, where the kernel has device-mapper and LVM's tools are installed.
  @Suite struct EndToEnd {
    static let unavailableReason: String? = {
      var missing: [String] = []
      if getuid() != 0 { missing.append("not running as root") }
      var probes = [["lvm", "version"], ["mkfs.ext4", "-V"], ["losetup", "--version"]]
      // dmsetup makes the control node when it is missing; only ask it when the node is there.
      if FileManager.default.fileExists(atPath: "/dev/mapper/control") {
        probes.insert(["dmsetup", "version"], at: 0)
      } else {
        missing.append("/dev/mapper/control does not exist (no device-mapper)")
      }
      for probe in probes where !LVMTests.EndToEnd.succeeds(probe) {
        missing.append("`\(probe.joined(separator: " "))` fails")
      }
      guard !missing.isEmpty else { return nil }
      return "needs device-mapper and LVM: " + missing.joined(separator: "; ")
    }()

    static func succeeds(_ argv: [String]) -> Bool {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
      process.arguments = argv
      process.environment = ["PATH": "/usr/sbin:/usr/bin:/sbin:/bin"]
      process.standardOutput = FileHandle.nullDevice
      process.standardError = FileHandle.nullDevice
      do { try process.run() } catch { return false }
      process.waitUntilExit()
      return process.terminationStatus == 0
    }

    static func write(_ text: String, at offset: UInt64, to device: String) throws {
      guard let handle = FileHandle(forUpdatingAtPath: device) else {
        throw VolumeError("cannot open \(device)")
      }
      defer { try? handle.close() }
      try handle.seek(toOffset: offset)
      try handle.write(contentsOf: Data(text.utf8))
      try handle.synchronize()
    }

    static func read(_ count: Int, at offset: UInt64, from device: String) throws -> String {
      guard let handle = FileHandle(forReadingAtPath: device) else {
        throw VolumeError("cannot open \(device)")
      }
      defer { try? handle.close() }
      try handle.seek(toOffset: offset)
      return String(decoding: try handle.read(upToCount: count) ?? Data(), as: UTF8.self)
    }

    @Test(
      .enabled(
        if: LVMTests.EndToEnd.unavailableReason == nil,
        Comment(
          rawValue: LVMTests.EndToEnd.unavailableReason ?? "device-mapper and LVM are available")
      ))
    func loopPoolImageCloneFreezeRemove() async throws {
      let runner = SystemCommandRunner()
      let directory = NSTemporaryDirectory() + "atelier-lvm-e2e-\(UUID().uuidString)"
      let group = "atelier-test-\(UInt32.random(in: 0...UInt32.max))"
      let poolFile = "\(directory)/pool.img"
      let setup = LVMPoolSetup(
        storage: .loop(path: poolFile, sizeBytes: 1 << 30), volumeGroup: group, runner: runner)
      defer {
        // Whatever happened: the group, the loop device and the files go.
        let cleanup = """
          vgremove -f \(group) >/dev/null 2>&1
          for device in $(losetup -j \(poolFile) | cut -d: -f1); do
            pvremove -ff -y "$device" >/dev/null 2>&1; losetup -d "$device"
          done
          rm -rf \(directory)
          """
        _ = Self.succeeds(["sh", "-c", cleanup])
      }
      try await setup.apply()
      #expect(await setup.plan().allSatisfy { $0.done })

      let rootfs = "\(directory)/rootfs.img"
      try await runner.run("truncate", "-s", "\(32 << 20)", rootfs)
      try await runner.run("mkfs.ext4", "-q", "-F", "-L", "atelier-test", rootfs)
      let volumes = LVMThinVolumeStore(
        volumeGroup: group, refuseAtPercent: 90, runner: runner)
      let image = try await volumes.importImage(name: "tiny", from: rootfs)
      #expect(image.path == "/dev/\(group)/image-tiny")
      // Importing again changes nothing.
      #expect(try await volumes.importImage(name: "tiny", from: rootfs) == image)

      let disk = try await volumes.clone(base: image, to: "sandbox-e2e", minimumSizeBytes: 64 << 20)
      #expect(FileManager.default.fileExists(atPath: disk.path))
      #expect(volumes.disk(of: "sandbox-e2e") == disk)
      // The clone holds the image's file system and was grown to the default size.
      try await runner.run("e2fsck", "-fn", disk.path)
      let size = try await runner.run(
        Command("blockdev", ["--getsize64", disk.path]))
      #expect(size.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 << 20)")

      // Writable although its image is read-only.
      let readOnly = try await runner.run(Command("blockdev", ["--getro", disk.path]))
      #expect(readOnly.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")

      // The frozen disk keeps what was there at the freeze while the volume moves on. The
      // marker goes past the end of the file system, in the part the clone grew.
      let offset: UInt64 = 48 << 20
      try Self.write("before", at: offset, to: disk.path)
      let plan = try await volumes.prepareFreeze("sandbox-e2e", as: "snapshot-e2e")
      #expect(plan.next == plan.previous)
      #expect(FileManager.default.fileExists(atPath: plan.frozen.path))
      try Self.write("after!", at: offset, to: disk.path)
      #expect(try Self.read(6, at: offset, from: plan.frozen.path) == "before")
      #expect(try Self.read(6, at: offset, from: disk.path) == "after!")
      let restored = try await volumes.clone(base: plan.frozen, to: "sandbox-restored")
      try await runner.run("e2fsck", "-fn", restored.path)
      #expect(try Self.read(6, at: offset, from: restored.path) == "before")
      #expect(try await volumes.list() == ["sandbox-e2e", "sandbox-restored", "snapshot-e2e"])

      let usage = try await volumes.poolUsage()
      #expect(usage.dataPercent >= 0 && usage.dataPercent < 90)

      #expect(await volumes.collectGarbage(keep: []) == ["snapshot-e2e"])
      try await volumes.remove("sandbox-e2e")
      try await volumes.remove("sandbox-restored")
      try await volumes.remove("sandbox-restored")  // absent: not an error
      #expect(try await volumes.list().isEmpty)
    }
  }
}
