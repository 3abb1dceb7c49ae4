import AtelierProcess
import Foundation
import Testing

@testable import AtelierHost

@Suite struct HostDriverTests {
  func temporaryDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "atelier-unit-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  func qemuImg(_ arguments: [String]) async throws -> RunResult {
    try await ProcessRunner.run(
      SpawnOptions(
        executable: "qemu-img", arguments: arguments,
        environment: ["PATH": "/usr/bin:/bin:/usr/local/bin"]))
  }

  @Test func qcow2OverlayIsValidAndReadsThroughToItsBase() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let base = "\(dir)/base.img"
    var bytes = [UInt8](repeating: 0, count: 3 << 20)
    for index in stride(from: 0, to: bytes.count, by: 4096) {
      bytes[index] = UInt8(index / 4096 % 256)
    }
    try Data(bytes).write(to: URL(fileURLWithPath: base))
    let overlay = "\(dir)/overlay.qcow2"
    try Qcow2Overlay.create(
      at: overlay, backingFile: base, backingFormat: .raw, virtualSize: UInt64(bytes.count))

    let check = try await qemuImg(["check", overlay])
    #expect(check.exitCode == 0, "\(check.stdoutText) \(check.stderrText)")
    let info = try await qemuImg(["info", "--output=json", overlay])
    let json = try JSONSerialization.jsonObject(with: Data(info.stdout)) as? [String: Any]
    #expect(json?["virtual-size"] as? Int == bytes.count)
    #expect(json?["backing-filename"] as? String == base)
    #expect(json?["backing-filename-format"] as? String == "raw")
    // Converting the overlay gives back the base's bytes.
    let flat = "\(dir)/flat.raw"
    let convert = try await qemuImg(["convert", "-O", "raw", overlay, flat])
    #expect(convert.exitCode == 0, "\(convert.stderrText)")
    #expect(try Data(contentsOf: URL(fileURLWithPath: flat)) == Data(bytes))
  }

  @Test func qcow2OverlayOfALargeDiskIsSmallAndChecksClean() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let base = "\(dir)/big.img"
    FileManager.default.createFile(atPath: base, contents: nil)
    let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: base))
    try handle.truncate(atOffset: 64 << 30)
    try handle.close()
    let store = FileVolumeStore(directory: "\(dir)/volumes")
    let disk = try await store.clone(
      base: DiskAttachment(path: base, format: .raw), to: "sandbox-x")
    #expect(disk.format == .qcow2)
    let size = try FileManager.default.attributesOfItem(atPath: disk.path)[.size] as? Int ?? 0
    #expect(size < 1 << 20)
    let check = try await qemuImg(["check", disk.path])
    #expect(check.exitCode == 0, "\(check.stdoutText) \(check.stderrText)")
    #expect(try await store.list() == ["sandbox-x"])
    try await store.remove("sandbox-x")
    #expect(try await store.list().isEmpty)
  }

  @Test func cpioArchiveHasNewcHeadersAndTrailer() {
    var archive = CpioArchive()
    archive.append(.directory(path: "bin"))
    archive.append(.file(path: "init", contents: Data("#!/bin/sh\n".utf8), mode: 0o755))
    archive.append(.characterDevice(path: "dev/console", major: 5, minor: 1))
    let data = archive.finished()
    let text = String(decoding: data, as: UTF8.self)
    #expect(text.hasPrefix("070701"))
    #expect(text.contains("TRAILER!!!"))
    #expect(data.count % 4 == 0)
    // The file entry: mode 100755, size 10.
    #expect(text.contains("000081ED"))
  }

  @Test func lddOutputGivesLibraryPaths() {
    let output = """
      \tlinux-vdso.so.1 (0x00007ffd)
      \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)
      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)
      \t/lib64/ld-linux-x86-64.so.2 (0x00007f)
      """
    #expect(
      RootFilesystem.libraryPaths(fromLdd: output) == [
        "/lib/x86_64-linux-gnu/libm.so.6", "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
      ])
  }

  @Test func loopbackPortsAreNotHandedOutTwice() throws {
    let allocator = LoopbackPortAllocator()
    var ports = Set<Int>()
    for _ in 0..<50 { ports.insert(try allocator.reserve()) }
    #expect(ports.count == 50)
    let first = ports.first!
    allocator.release(first)
    allocator.markInUse(first)
    #expect(!ports.isEmpty)
  }

  @Test func qemuCommandLineCarriesTheSpec() {
    let vmm = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes",
      runner: SystemCommandRunner())
    let spec = VMSpec(
      sandboxId: "abcdefabcdef", runtimeDirectory: "/data/sandboxes/abcdefabcdef",
      kernelPath: "/k/vmlinuz", initrdPath: "/k/initrd.img",
      kernelArguments: ["atelier.id=abcdefabcdef"],
      disk: DiskAttachment(path: "/data/volumes/sandbox-abcdefabcdef.qcow2", format: .qcow2),
      vcpus: 2,
      memoryMb: 512,
      network: NetworkAttachment(
        backend: .userMode(forwards: [
          .init(hostAddress: "127.0.0.1", hostPort: 40000, guestPort: 9998)
        ]),
        guestIPv4: "10.0.2.15", prefixLength: 24, gateway: "10.0.2.2", dns: "10.0.2.3",
        agent: .tcp(host: "127.0.0.1", port: 40000)))
    let arguments = vmm.arguments(for: spec)
    func value(after flag: String) -> String? {
      arguments.firstIndex(of: flag).map { arguments[$0 + 1] }
    }
    #expect(value(after: "-m") == "512")
    #expect(value(after: "-smp") == "2")
    #expect(value(after: "-accel") == "tcg")
    #expect(value(after: "-pidfile") == "/data/sandboxes/abcdefabcdef/qemu.pid")
    #expect(value(after: "-netdev")?.contains("hostfwd=tcp:127.0.0.1:40000-10.0.2.15:9998") == true)
    #expect(value(after: "-drive")?.contains("format=qcow2") == true)
    let append = value(after: "-append") ?? ""
    #expect(append.contains("atelier.id=abcdefabcdef"))
    #expect(append.contains("console=ttyS0"))
    if let khz = HostInfo.tscKHz() { #expect(append.contains("tsc_early_khz=\(khz)")) }
    #expect(arguments.contains("-daemonize"))
  }
}
