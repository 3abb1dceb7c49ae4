import AsyncHTTPClient
import AtelierCore
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

  @Test func clonesOfSmallDisksAreGrownToTheMinimumSize() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let base = "\(dir)/small.img"
    FileManager.default.createFile(atPath: base, contents: Data(repeating: 7, count: 1 << 20))
    let store = FileVolumeStore(directory: "\(dir)/volumes")
    let disk = try await store.clone(
      base: DiskAttachment(path: base, format: .raw), to: "sandbox-grown",
      minimumSizeBytes: 3 << 30)
    let info = try await qemuImg(["info", "--output=json", disk.path])
    let json = try JSONSerialization.jsonObject(with: Data(info.stdoutText.utf8)) as? [String: Any]
    #expect(json?["virtual-size"] as? Int == 3 << 30)
    // A base larger than the minimum keeps its own size.
    let same = try await store.clone(
      base: DiskAttachment(path: base, format: .raw), to: "sandbox-same", minimumSizeBytes: 1 << 10)
    let sameInfo = try await qemuImg(["info", "--output=json", same.path])
    let sameJSON =
      try JSONSerialization.jsonObject(with: Data(sameInfo.stdoutText.utf8)) as? [String: Any]
    #expect(sameJSON?["virtual-size"] as? Int == 1 << 20)
    // Another size for another clone.
    let asked = try await store.clone(
      base: DiskAttachment(path: base, format: .raw), to: "sandbox-asked",
      minimumSizeBytes: 2 << 30)
    let askedInfo = try await qemuImg(["info", "--output=json", asked.path])
    let askedJSON =
      try JSONSerialization.jsonObject(with: Data(askedInfo.stdoutText.utf8)) as? [String: Any]
    #expect(askedJSON?["virtual-size"] as? Int == 2 << 30)
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
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes")
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
    #expect(value(after: "-accel") == "tcg,tb-size=\(QEMUMicroVM.defaultTranslationCacheMb)")
    #expect(value(after: "-pidfile") == "/data/sandboxes/abcdefabcdef/qemu.pid")
    // Its RAM is a file of its own, mapped shared (what a snapshot copies).
    #expect(
      value(after: "-object")
        == "memory-backend-file,id=mem,size=512M,mem-path=/data/sandboxes/abcdefabcdef/memory,share=on"
    )
    #expect(value(after: "-machine")?.hasSuffix(",memory-backend=mem") == true)
    // The console goes to the relay's FIFO, never straight to a file.
    #expect(
      value(after: "-chardev") == "file,id=console,path=/data/sandboxes/abcdefabcdef/console.pipe")
    #expect(value(after: "-netdev")?.contains("hostfwd=tcp:127.0.0.1:40000-10.0.2.15:9998") == true)
    #expect(value(after: "-drive")?.contains("format=qcow2") == true)
    let append = value(after: "-append") ?? ""
    #expect(append.contains("atelier.id=abcdefabcdef"))
    #expect(append.contains("console=ttyS0"))
    if let khz = HostInfo.tscKHz() { #expect(append.contains("tsc_early_khz=\(khz)")) }
    // Not daemonized (seccomp's spawn=deny forbids the fork), and under the seccomp filter.
    #expect(!arguments.contains("-daemonize"))
    #expect(!arguments.contains("-runas"))
    #expect(
      value(after: "-sandbox")
        == "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny")
    #expect(!arguments.contains("-incoming"))
  }

  @Test func qemuRestoresMapTheSnapshotPrivatelyAndWaitPaused() {
    let vmm = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes")
    let spec = VMSpec(
      sandboxId: "abcdefabcdef", runtimeDirectory: "/data/sandboxes/abcdefabcdef",
      kernelPath: "/k/vmlinuz", initrdPath: "/k/initrd.img", kernelArguments: [],
      disk: DiskAttachment(path: "/d.qcow2", format: .qcow2), vcpus: 1, memoryMb: 256,
      network: NetworkAttachment(
        backend: .tap(device: "tap-x", mac: "06:00:0a:00:00:02"), guestIPv4: "10.0.0.2",
        prefixLength: 24, gateway: "10.0.0.1", dns: "10.0.0.1",
        agent: .vsock(cid: 77, port: 9998), agentChannel: .vsock(port: 9998)))
    for format in [SavedVMState.Format.qemuMemoryFile, .qemuMemoryFileDevices] {
      let arguments = vmm.arguments(
        for: spec, memory: .privateMapping(base: "/data/snapshots/s/memory"), incoming: format)
      #expect(
        arguments.contains(
          "memory-backend-file,id=mem,size=256M,mem-path=/data/sandboxes/abcdefabcdef/memory.base,share=off"
        ))
      #expect(arguments.contains("-incoming") && arguments.contains("-S"))
      // Device state saved without RAM carries no configuration section.
      #expect(
        arguments.contains("migration.send-configuration=off")
          == (format == .qemuMemoryFileDevices))
      // The TAP and vhost-vsock come as descriptors 3 and 4 (QEMU's user cannot open them).
      #expect(arguments.contains("tap,id=net0,fd=3"))
      #expect(arguments.contains("vhost-vsock-device,id=vsock0,guest-cid=77,vhostfd=4"))
    }
  }

  @Test func qemuGuestsGetAVsockDeviceWhenTheAgentIsOnVsock() async throws {
    let vmm = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes",
      vhostVsock: true)
    let network = try await UserModeNetwork(agentOverVsock: true).attach(
      sandboxId: "abcdefabcdef", policy: NetworkPolicy(internet: true))
    #expect(network.agentChannel == .vsock(port: 9998))
    #expect(network.backend == .userMode(forwards: []))
    let endpoint = try vmm.vsockEndpoint(port: 9998, runtimeDirectory: "/data/sandboxes/x")
    guard case .vsock(let cid, let port) = endpoint else {
      Issue.record("not a vsock endpoint: \(endpoint)")
      return
    }
    #expect(cid >= 3 && port == 9998)
    // Each VM its own CID.
    #expect(try vmm.vsockEndpoint(port: 9998, runtimeDirectory: "/data/sandboxes/y") != endpoint)

    var attached = network
    attached.agent = endpoint
    let spec = VMSpec(
      sandboxId: "abcdefabcdef", runtimeDirectory: "/data/sandboxes/abcdefabcdef",
      kernelPath: "/k/vmlinuz", initrdPath: "/k/initrd.img",
      kernelArguments: attached.bootParameters(sandboxId: "abcdefabcdef", hostname: "h")
        .kernelArguments,
      disk: DiskAttachment(path: "/d.qcow2", format: .qcow2), vcpus: 1, memoryMb: 256,
      network: attached)
    let arguments = vmm.arguments(for: spec)
    #expect(arguments.contains("vhost-vsock-device,id=vsock0,guest-cid=\(cid),vhostfd=3"))
    #expect(QEMUMicroVM.guestCID(in: arguments) == cid)
    #expect(!arguments.contains { $0.contains("hostfwd=") })
    // The agent listens on loopback only and relays vsock port 9998 to it.
    let append = arguments[arguments.firstIndex(of: "-append")! + 1]
    #expect(append.contains("atelier.listen=127.0.0.1"))
    #expect(append.contains("atelier.vsock=9998"))

    // Without vhost-vsock there is no vsock to hand out.
    let plain = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes")
    #expect(throws: VMMError.self) {
      try plain.vsockEndpoint(port: 9998, runtimeDirectory: "/data/sandboxes/x")
    }
  }

  @Test func userModeAgentsAreOnAPrivateRestrictedNICNotOnEth0() async throws {
    let ports = LoopbackPortAllocator()
    let network = UserModeNetwork(ports: ports)
    let attachment = try await network.attach(
      sandboxId: "abcdefabcdef", policy: NetworkPolicy(internet: true))
    #expect(attachment.backend == .userMode(forwards: []))
    guard case .privateInterface(let forward, let address, 24) = attachment.agentChannel,
      case .tcp("127.0.0.1", let port) = attachment.agent
    else {
      Issue.record("unexpected agent channel: \(attachment.agentChannel)")
      return
    }
    #expect(address == "10.0.3.15" && forward.hostPort == port && forward.guestPort == 9998)
    let parameters = attachment.bootParameters(sandboxId: "abcdefabcdef", hostname: "h")
    #expect(parameters.listen == "10.0.3.15")
    #expect(parameters.agentInterface == "eth1:10.0.3.15/24")
    let vmm = QEMUMicroVM(
      binary: "qemu-system-x86_64", acceleration: .tcg, sandboxesDirectory: "/data/sandboxes")
    let arguments = vmm.arguments(
      for: VMSpec(
        sandboxId: "abcdefabcdef", runtimeDirectory: "/data/sandboxes/abcdefabcdef",
        kernelPath: "/k", initrdPath: "/i", kernelArguments: parameters.kernelArguments,
        disk: DiskAttachment(path: "/d.qcow2", format: .qcow2), vcpus: 1, memoryMb: 256,
        network: attachment))
    let netdevs = arguments.indices.filter { arguments[$0] == "-netdev" }.map { arguments[$0 + 1] }
    #expect(netdevs.count == 2)
    #expect(netdevs.first?.contains("hostfwd") == false)
    #expect(netdevs.last?.contains("restrict=on") == true)
    #expect(netdevs.last?.contains("hostfwd=tcp:127.0.0.1:\(port)-10.0.3.15:9998") == true)
  }

  /// A real AF_VSOCK connection attempt to a CID where nothing listens (the local CID: it
  /// never leaves the machine): the TCP client sees a failed connection, not a hang.
  @Test func kernelVsockForwarderFailsTheConnectionWhenNothingListens() async throws {
    let registry = VsockForwarders()
    let endpoint = AgentEndpoint.vsock(cid: 1, port: 9998)
    let (host, port) = try endpoint.tcpAddress(using: registry)
    defer { registry.stopAll(.kernel(cid: 1)) }
    #expect(registry.count == 1)
    await #expect(throws: (any Error).self) {
      let response = try await HTTPClient.shared.execute(
        HTTPClientRequest(url: "http://\(host):\(port)/health"), timeout: .seconds(20))
      _ = try await response.body.collect(upTo: 1 << 20)
    }
    // CID 0 means "not assigned yet": no forwarder for it.
    #expect(throws: VsockError.self) {
      try AgentEndpoint.vsock(cid: 0, port: 9998).tcpAddress(using: registry)
    }
  }
}
