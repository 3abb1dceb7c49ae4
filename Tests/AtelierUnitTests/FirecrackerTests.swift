import AsyncHTTPClient
import AtelierAgentAPI
import AtelierCore
import AtelierProcess
import Foundation
import NIOCore
import Synchronization
import Testing

@testable import AtelierHost

#if canImport(Glibc)
  import Glibc
#endif

/// The Firecracker backend against a fake API server on its Unix socket (Firecracker cannot run
/// here), the hybrid vsock forwarder against a fake vsock socket, and one end-to-end boot that
/// runs only where Firecracker can.
@Suite struct FirecrackerTests {
  // MARK: Fixtures

  /// Short, because Unix socket paths are limited to 107 bytes.
  func temporaryDirectory() throws -> String {
    let path = "/tmp/atelier-fc-\(UUID().uuidString.prefix(8).lowercased())"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  func spec(
    runtimeDirectory: String,
    backend: NetworkAttachment.Backend = .tap(
      device: "tap-abc", mac: "06:00:0a:00:09:02"),
    disk: DiskAttachment = DiskAttachment(path: "/dev/atelier/sandbox-abc", format: .raw)
  ) -> VMSpec {
    VMSpec(
      sandboxId: "abcdefghijkl", runtimeDirectory: runtimeDirectory,
      kernelPath: "/images/kernel/vmlinux", initrdPath: "/images/kernel/initrd.img",
      kernelArguments: ["atelier.id=abcdefghijkl", "atelier.vsock=9998"], disk: disk, vcpus: 2,
      memoryMb: 256,
      network: NetworkAttachment(
        backend: backend, guestIPv4: "10.0.9.2", prefixLength: 24, gateway: "10.0.9.1",
        dns: "10.0.9.1", agent: .hybridVsock(path: "", port: 9998)))
  }

  /// A stand-in `firecracker`: prints its arguments to the console and stays alive (its
  /// arguments stay visible in /proc, as Firecracker's do).
  func fakeFirecracker(in dir: String, script: String? = nil) throws -> String {
    let path = "\(dir)/fake-firecracker"
    let body = script ?? "echo \"fake firecracker $*\"\nwhile :; do sleep 1; done\n"
    try ("#!/bin/sh\n" + body).write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
    return path
  }

  /// Serves the API on the runtime directory's socket once the backend has started the
  /// process (its pid file is written after stale sockets are removed).
  func serveAPIWhenLaunched(
    runtimeDirectory: String, workDirectory: String? = nil, failures: [String: String] = [:],
    onRequest: @escaping @Sendable (String, String) -> Void = { _, _ in }
  )
    -> Task<FakeFirecrackerAPI, any Error>
  {
    Task {
      let deadline = ContinuousClock.now + .seconds(10)
      while !FileManager.default.fileExists(atPath: "\(runtimeDirectory)/firecracker.pid") {
        guard ContinuousClock.now < deadline else { throw VsockError("never launched") }
        try await Task.sleep(for: .milliseconds(2))
      }
      return try FakeFirecrackerAPI(
        socketPath: FirecrackerVMM.apiSocket(workDirectory ?? runtimeDirectory),
        failures: failures, onRequest: onRequest)
    }
  }

  func vmm(_ dir: String, binary: String = "firecracker") -> FirecrackerVMM {
    FirecrackerVMM(binary: binary, sandboxesDirectory: "\(dir)/sandboxes")
  }

  /// The exact calls that configure and start `spec` (tap-abc, 2 vCPUs, 256 MiB).
  func expectedBootRequests(_ vmm: FirecrackerVMM, _ spec: VMSpec) -> [RecordedRequest] {
    [
      RecordedRequest("PUT", "/machine-config", #"{"vcpu_count": 2, "mem_size_mib": 256}"#),
      RecordedRequest(
        "PUT", "/boot-source",
        """
        {"kernel_image_path": "/images/kernel/vmlinux",
         "initrd_path": "/images/kernel/initrd.img",
         "boot_args": "console=ttyS0 quiet loglevel=3 reboot=k panic=-1 i8042.noaux i8042.nomux \
        i8042.dumbkbd swiotlb=noforce random.trust_cpu=on atelier.id=abcdefghijkl atelier.vsock=9998"}
        """),
      RecordedRequest(
        "PUT", "/drives/rootfs",
        #"{"drive_id": "rootfs", "path_on_host": "rootfs", "is_root_device": true, "is_read_only": false}"#
      ),
      RecordedRequest(
        "PUT", "/network-interfaces/eth0",
        #"{"iface_id": "eth0", "host_dev_name": "tap-abc", "guest_mac": "06:00:0a:00:09:02"}"#),
      RecordedRequest("PUT", "/vsock", #"{"guest_cid": 3, "uds_path": "vsock.sock"}"#),
      RecordedRequest("PUT", "/actions", #"{"action_type": "InstanceStart"}"#),
    ]
  }

  // MARK: API client

  @Test func apiClientSendsJSONAndReadsAnswers() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let server = try FakeFirecrackerAPI(
      socketPath: "\(dir)/api.sock", failures: ["PUT /boot-source": "Invalid kernel path"])
    defer { server.stop() }
    let api = FirecrackerClient(socketPath: "\(dir)/api.sock")

    try await api.putVsock(FirecrackerVsock(guestCid: 3, udsPath: "/a/b.sock"))
    #expect(try await api.version() == "1.16.0")
    let error = await #expect(throws: FirecrackerAPIError.self) {
      try await api.putBootSource(
        FirecrackerBootSource(kernelImagePath: "/k", initrdPath: nil, bootArgs: ""))
    }
    #expect(error?.status == 400)
    #expect(error?.faultMessage == "Invalid kernel path")
    #expect(
      server.requests == [
        RecordedRequest("PUT", "/vsock", #"{"guest_cid": 3, "uds_path": "/a/b.sock"}"#),
        RecordedRequest("GET", "/version", nil),
        // No initrd: the field is left out, not sent as null.
        RecordedRequest("PUT", "/boot-source", #"{"kernel_image_path": "/k", "boot_args": ""}"#),
      ])
    // The raw request: HTTP/1.1, JSON with an exact length, one request per connection.
    let head = (server.rawHeads.first ?? "").lowercased()
    #expect(head.hasPrefix("put /vsock http/1.1\r\n"))
    #expect(head.contains("\r\ncontent-length: 38\r\n"))
    #expect(head.contains("\r\ncontent-type: application/json\r\n"))
    #expect(head.contains("\r\nconnection: close\r\n"))
  }

  @Test func apiClientHasOneTypedCallPerEndpoint() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let server = try FakeFirecrackerAPI(socketPath: "\(dir)/api.sock")
    defer { server.stop() }
    let api = FirecrackerClient(socketPath: "\(dir)/api.sock")
    let info = try await api.describeInstance()
    #expect(info.state == .running && info.id == "fake")
    try await api.putMachineConfiguration(FirecrackerMachineConfig(vcpuCount: 1, memSizeMib: 128))
    try await api.putDrive(
      FirecrackerDrive(driveId: "d1", pathOnHost: "d1.img", isRootDevice: false, isReadOnly: true))
    try await api.putNetworkInterface(
      FirecrackerNetworkInterface(ifaceId: "eth0", hostDevName: "tap0", guestMac: nil))
    try await api.createSyncAction(FirecrackerAction(actionType: .instanceStart))
    try await api.patchVm(FirecrackerVMState(state: .paused))
    try await api.createSnapshot(
      FirecrackerSnapshotCreate(snapshotType: .full, snapshotPath: "/s", memFilePath: "/m"),
      timeout: .seconds(5))
    #expect(
      server.requests.map { "\($0.method) \($0.path)" } == [
        "GET /", "PUT /machine-config", "PUT /drives/d1", "PUT /network-interfaces/eth0",
        "PUT /actions", "PATCH /vm", "PUT /snapshot/create",
      ])
    #expect(
      server.requests[3].body
        == canonicalJSON(Data(#"{"iface_id":"eth0","host_dev_name":"tap0"}"#.utf8)))
  }

  @Test func apiClientReportsAMissingSocket() async throws {
    let api = FirecrackerClient(
      socketPath: "/tmp/atelier-fc-missing-\(UUID().uuidString.prefix(8))")
    let error = await #expect(throws: FirecrackerAPIError.self) {
      _ = try await api.describeInstance()
    }
    #expect(error?.status == nil)
    #expect(error?.faultMessage.contains("no answer on /tmp/atelier-fc-missing-") == true)
  }

  // MARK: Configuration and lifecycle bodies

  @Test func bootConfigurationIsTheExactSequenceOfCalls() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let server = try FakeFirecrackerAPI(socketPath: "\(dir)/api.sock")
    defer { server.stop() }
    let vmm = vmm(dir)
    let spec = spec(runtimeDirectory: "\(dir)/sandboxes/abcdefghijkl")
    try await vmm.configure(
      spec, tap: try FirecrackerVMM.tapDevice(spec),
      api: FirecrackerClient(socketPath: "\(dir)/api.sock"))
    #expect(server.requests == expectedBootRequests(vmm, spec))
  }

  @Test func pauseResumeAndSnapshotCreateBodies() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let server = try FakeFirecrackerAPI(socketPath: FirecrackerVMM.apiSocket(dir))
    defer { server.stop() }
    let vmm = vmm(dir)
    let handle = VMHandle(sandboxId: "abcdefghijkl", pid: 1, runtimeDirectory: dir)

    try await vmm.pause(handle)
    let saved = try await vmm.saveState(handle, into: "/data/snapshots/s1")
    try await vmm.resume(handle)
    #expect(
      server.requests == [
        RecordedRequest("PATCH", "/vm", #"{"state": "Paused"}"#),
        RecordedRequest(
          "PUT", "/snapshot/create",
          """
          {"snapshot_type": "Full", "snapshot_path": "/data/snapshots/s1/devices.state",
           "mem_file_path": "/data/snapshots/s1/memory"}
          """),
        RecordedRequest("PATCH", "/vm", #"{"state": "Resumed"}"#),
      ])
    // The same shape as QEMU's: a memory file restores map, and the device state.
    #expect(
      saved
        == SavedVMState(
          format: .firecracker, memoryPath: "/data/snapshots/s1/memory",
          devicesPath: "/data/snapshots/s1/devices.state"))
  }

  @Test func snapshotLoadOverridesTheTapAndLeavesTheVMPaused() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let server = try FakeFirecrackerAPI(socketPath: "\(dir)/api.sock")
    defer { server.stop() }
    try await vmm(dir).loadSnapshot(
      memory: "/data/snapshots/s1/memory", devices: "/data/snapshots/s1/devices.state",
      tap: (device: "tap-newone", mac: "06:00:0a:00:09:07"),
      api: FirecrackerClient(socketPath: "\(dir)/api.sock"))
    // No vsock_override: the snapshot's relative `vsock.sock` resolves in the new process's
    // own directory (and Firecracker before 1.16 rejects the field).
    #expect(
      server.requests == [
        RecordedRequest(
          "PUT", "/snapshot/load",
          """
          {"snapshot_path": "/data/snapshots/s1/devices.state",
           "mem_backend": {"backend_path": "/data/snapshots/s1/memory", "backend_type": "File"},
           "resume_vm": false,
           "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap-newone"}]}
          """)
      ])
  }

  @Test func apiErrorSurfacesAsVMMErrorWithTheFaultMessage() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let fault = "The requested operation is not supported before starting the microVM."
    let server = try FakeFirecrackerAPI(
      socketPath: FirecrackerVMM.apiSocket(dir), failures: ["PATCH /vm": fault])
    defer { server.stop() }
    let handle = VMHandle(sandboxId: "abcdefghijkl", pid: 1, runtimeDirectory: dir)
    try "guest said goodbye\n".write(
      toFile: "\(dir)/console.log", atomically: true, encoding: .utf8)
    let error = await #expect(throws: VMMError.self) { try await vmm(dir).pause(handle) }
    #expect(error?.message.contains(fault) == true)
    #expect(error?.message.contains("PATCH /vm") == true)
    #expect(error?.consoleTail.contains("guest said goodbye") == true)
  }

  @Test func userModeNetworkQcow2AndDiskSwitchingAreRefused() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vmm = vmm(dir, binary: "/nonexistent/firecracker")
    let userMode = spec(runtimeDirectory: "\(dir)/r", backend: .userMode(forwards: []))
    let network = await #expect(throws: VMMError.self) { _ = try await vmm.boot(userMode) }
    #expect(network?.message.contains("TAP") == true)
    let qcow2 = spec(runtimeDirectory: "\(dir)/r", disk: DiskAttachment(path: "/d", format: .qcow2))
    let disk = await #expect(throws: VMMError.self) {
      _ = try await vmm.restore(
        qcow2, from: SavedVMState(format: .firecracker, memoryPath: "/m", devicesPath: "/s"))
    }
    #expect(disk?.message.contains("raw") == true)
    // Refused before anything was started or created.
    #expect(!FileManager.default.fileExists(atPath: "\(dir)/r"))
    let handle = VMHandle(sandboxId: "abcdefghijkl", pid: 1, runtimeDirectory: dir)
    await #expect(throws: VMMError.self) {
      try await vmm.switchDisk(handle, to: DiskAttachment(path: "/x", format: .qcow2))
    }
  }

  // MARK: The process

  @Test func bootStartsTheProcessConfiguresItAndFindsItAgain() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vmm = vmm(dir, binary: try fakeFirecracker(in: dir))
    let runtime = "\(dir)/sandboxes/abcdefghijkl"
    let spec = spec(runtimeDirectory: runtime)
    let serving = serveAPIWhenLaunched(runtimeDirectory: runtime)

    let handle = try await vmm.boot(spec)
    let server = try await serving.value
    defer { server.stop() }
    #expect(server.requests == expectedBootRequests(vmm, spec))
    #expect(
      try String(contentsOfFile: "\(runtime)/firecracker.pid", encoding: .utf8)
        == "\(handle.pid)\n")
    #expect(
      try FileManager.default.destinationOfSymbolicLink(atPath: "\(runtime)/rootfs")
        == spec.disk.path)
    #expect(vmm.isRunning(handle))
    #expect(vmm.discover().contains(ObservedVM(sandboxId: "abcdefghijkl", pid: handle.pid)))
    #expect(vmm.adopt(sandboxId: "abcdefghijkl", runtimeDirectory: runtime) == handle)
    // Started in its runtime directory (where the relative disk and vsock names resolve),
    // with our socket and id; its output is the console log.
    #expect(
      (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(handle.pid)/cwd"))
        == runtime)
    #expect(
      HostProcesses.commandLine(of: handle.pid)?.suffix(4)
        == ["--api-sock", "\(runtime)/firecracker.sock", "--id", "abcdefghijkl"])
    try await waitFor { vmm.consoleTail(runtimeDirectory: runtime).contains("fake firecracker") }
    #expect(
      vmm.vsockEndpoint(port: 9998, runtimeDirectory: runtime)
        == .hybridVsock(path: "\(runtime)/vsock.sock", port: 9998))

    await vmm.kill(handle)
    #expect(!vmm.isRunning(handle))
    #expect(!HostProcesses.isAlive(handle.pid))
    #expect(vmm.discover().isEmpty)
    #expect(vmm.adopt(sandboxId: "abcdefghijkl", runtimeDirectory: runtime) == nil)
  }

  @Test func bootRefusedByTheAPIThrowsWithTheConsoleAndLeavesNoProcess() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vmm = vmm(dir, binary: try fakeFirecracker(in: dir))
    let runtime = "\(dir)/sandboxes/abcdefghijkl"
    let fault = "Unable to create the block device: No such file or directory (os error 2)"
    let serving = serveAPIWhenLaunched(
      runtimeDirectory: runtime, failures: ["PUT /drives/rootfs": fault])

    let error = await #expect(throws: VMMError.self) {
      _ = try await vmm.boot(spec(runtimeDirectory: runtime))
    }
    let server = try await serving.value
    defer { server.stop() }
    #expect(error?.message.contains(fault) == true)
    #expect(error?.consoleTail.contains("fake firecracker --api-sock") == true)
    #expect(server.requests.map(\.path) == ["/machine-config", "/boot-source", "/drives/rootfs"])
    let pid = Int32(
      try String(contentsOfFile: "\(runtime)/firecracker.pid", encoding: .utf8)
        .trimmingCharacters(in: .whitespacesAndNewlines))!
    #expect(!HostProcesses.isAlive(pid))
    #expect(vmm.discover().isEmpty)
  }

  @Test func bootThrowsWithTheConsoleWhenFirecrackerExits() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let binary = try fakeFirecracker(
      in: dir, script: "echo 'Error: Kvm(Error opening /dev/kvm: Permission denied)' >&2\nexit 1\n")
    let runtime = "\(dir)/sandboxes/abcdefghijkl"
    let error = await #expect(throws: VMMError.self) {
      _ = try await vmm(dir, binary: binary).boot(spec(runtimeDirectory: runtime))
    }
    #expect(error?.message.contains("exited") == true)
    #expect(error?.consoleTail.contains("Error opening /dev/kvm") == true)
  }

  @Test func restoreStartsAFreshProcessThatLoadsTheSnapshot() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vmm = vmm(dir, binary: try fakeFirecracker(in: dir))
    let runtime = "\(dir)/sandboxes/restoredone1"
    var spec = spec(
      runtimeDirectory: runtime, backend: .tap(device: "tap-restored", mac: "06:00:0a:00:09:03"),
      disk: DiskAttachment(path: "/dev/atelier/sandbox-restoredone1", format: .raw))
    spec.sandboxId = "restoredone1"
    let serving = serveAPIWhenLaunched(runtimeDirectory: runtime)

    let handle = try await vmm.restore(
      spec,
      from: SavedVMState(
        format: .firecracker, memoryPath: "/data/snapshots/s1/memory",
        devicesPath: "/data/snapshots/s1/devices.state"))
    let server = try await serving.value
    defer { server.stop() }
    #expect(server.requests.map(\.path) == ["/snapshot/load"])
    #expect(server.requests.first?.body?.contains(#""host_dev_name":"tap-restored""#) == true)
    // The restored VM's own disk and vsock socket, by the names the snapshot recorded.
    #expect(
      try FileManager.default.destinationOfSymbolicLink(atPath: "\(runtime)/rootfs")
        == "/dev/atelier/sandbox-restoredone1")
    #expect(FirecrackerVMM.vsockSocket(runtime) == "\(runtime)/vsock.sock")
    #expect(vmm.isRunning(handle))
    await vmm.kill(handle)
    #expect(!HostProcesses.isAlive(handle.pid))
  }

  // MARK: Jailer

  /// A stand-in jailer: prints its arguments, makes the chroot folder its working directory
  /// and execs the exec file the way the jailer does (`--id <id>` and timing options, then
  /// what follows `--`).
  /// It does not chroot or drop privileges.
  func fakeJailer(in dir: String) throws -> String {
    let path = "\(dir)/fake-jailer"
    let script = """
      #!/bin/sh
      echo "fake jailer $*"
      while [ $# -gt 0 ]; do
        case "$1" in
          --id) id=$2; shift 2 ;;
          --exec-file) exec_file=$2; shift 2 ;;
          --chroot-base-dir) base=$2; shift 2 ;;
          --) shift; break ;;
          *) shift 2 ;;
        esac
      done
      cd "$base/$(basename "$exec_file")/$id/root" || exit 1
      exec "$exec_file" --id "$id" --start-time-us 1 "$@"

      """
    try script.write(toFile: path, atomically: true, encoding: .utf8)
    chmod(path, 0o755)
    return path
  }

  func jsonObject(_ text: String?) throws -> [String: Any] {
    try #require(
      try JSONSerialization.jsonObject(with: Data((text ?? "").utf8)) as? [String: Any])
  }

  func inode(_ path: String) -> (ino: UInt, uid: UInt32, gid: UInt32) {
    var info = stat()
    guard stat(path, &info) == 0 else { return (0, 0, 0) }
    return (UInt(info.st_ino), info.st_uid, info.st_gid)
  }

  @Test func jailedBootPlacesFilesInTheChrootAndSnapshotsMoveInAndOut() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let firecracker = try fakeFirecracker(in: dir)
    let jail = FirecrackerJail(jailerBinary: try fakeJailer(in: dir), uid: 4242, gid: 4343)
    let vmm = FirecrackerVMM(
      binary: firecracker, sandboxesDirectory: "\(dir)/sandboxes", jail: jail)
    for (name, size) in [("vmlinux", 4096), ("initrd.img", 2048), ("disk.img", 1 << 20)] {
      try Data(count: size).write(to: URL(fileURLWithPath: "\(dir)/\(name)"))
    }
    let runtime = "\(dir)/sandboxes/abcdefghijkl"
    var spec = spec(
      runtimeDirectory: runtime, disk: DiskAttachment(path: "\(dir)/disk.img", format: .raw))
    spec.kernelPath = "\(dir)/vmlinux"
    spec.initrdPath = "\(dir)/initrd.img"
    let work = vmm.workDirectory(runtime)
    #expect(work == "\(runtime)/jail-root")
    let root = "\(runtime)/jail/fake-firecracker/abcdefghijkl/root"
    // What the jailed "Firecracker" leaves as its snapshot: plain files, or a symlink to a
    // host file (what a compromised one could try).
    try "secret\n".write(toFile: "\(dir)/host-file", atomically: true, encoding: .utf8)
    let snapshotKind = Mutex("plain")
    let serving = serveAPIWhenLaunched(runtimeDirectory: runtime, workDirectory: work) {
      _, path in
      guard path == "/snapshot/create" else { return }
      if snapshotKind.withLock({ $0 }) == "plain" {
        FileManager.default.createFile(
          atPath: "\(root)/snapshot.mem", contents: Data("memory".utf8))
      } else {
        symlink("\(dir)/host-file", "\(root)/snapshot.mem")
      }
      FileManager.default.createFile(
        atPath: "\(root)/snapshot.mem.vmstate", contents: Data("state".utf8))
    }

    let handle = try await vmm.boot(spec)
    let server = try await serving.value
    defer { server.stop() }
    defer { Task { await vmm.kill(handle) } }
    // Firecracker is told the chroot's paths; disk and vsock keep their relative names.
    let boot = try #require(server.requests.first { $0.path == "/boot-source" })
    let bootSource = try jsonObject(boot.body)
    #expect(bootSource["kernel_image_path"] as? String == "/vmlinux")
    #expect(bootSource["initrd_path"] as? String == "/initrd")
    #expect(
      server.requests.filter { $0.path != "/boot-source" }
        == expectedBootRequests(vmm, spec).filter { $0.path != "/boot-source" })

    // The chroot holds links to the kernel and initrd, and the disk handed to the jailed user.
    #expect(
      try FileManager.default.destinationOfSymbolicLink(atPath: work)
        == "jail/fake-firecracker/abcdefghijkl/root")
    #expect(inode("\(root)/vmlinux").ino == inode("\(dir)/vmlinux").ino)
    #expect(inode("\(root)/initrd").ino == inode("\(dir)/initrd.img").ino)
    let disk = inode("\(root)/rootfs")
    #expect(disk.ino == inode("\(dir)/disk.img").ino && disk.uid == 4242 && disk.gid == 4343)

    // The jailer got its options; Firecracker runs in the chroot with the jailer's `--id`.
    try await waitFor { vmm.consoleTail(runtimeDirectory: runtime).contains("fake firecracker") }
    let console = vmm.consoleTail(runtimeDirectory: runtime)
    #expect(
      console.contains(
        "fake jailer --id abcdefghijkl --exec-file \(firecracker) --uid 4242 --gid 4343 "
          + "--chroot-base-dir \(runtime)/jail -- --api-sock firecracker.sock"), "\(console)")
    #expect(
      (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(handle.pid)/cwd"))
        == root)
    #expect(vmm.isRunning(handle))
    #expect(vmm.discover() == [ObservedVM(sandboxId: "abcdefghijkl", pid: handle.pid)])
    #expect(vmm.adopt(sandboxId: "abcdefghijkl", runtimeDirectory: runtime) == handle)
    #expect(
      vmm.vsockEndpoint(port: 9998, runtimeDirectory: runtime)
        == .hybridVsock(path: "\(work)/vsock.sock", port: 9998))

    // A snapshot is written in the chroot (by the fake API, as Firecracker would), then moved
    // out. Leftovers of an earlier save are cleared first.
    try Data("stale".utf8).write(to: URL(fileURLWithPath: "\(root)/snapshot.mem"))
    try FileManager.default.createDirectory(
      atPath: "\(dir)/snap", withIntermediateDirectories: true)
    let saved = try await vmm.saveState(handle, into: "\(dir)/snap")
    #expect(
      server.requests.last
        == RecordedRequest(
          "PUT", "/snapshot/create",
          #"{"snapshot_type": "Full", "snapshot_path": "/snapshot.mem.vmstate", "mem_file_path": "/snapshot.mem"}"#
        ))
    #expect(FileManager.default.contents(atPath: "\(dir)/snap/memory") == Data("memory".utf8))
    #expect(
      FileManager.default.contents(atPath: "\(dir)/snap/devices.state") == Data("state".utf8))
    #expect(!FileManager.default.fileExists(atPath: "\(root)/snapshot.mem"))
    // Out of the jail, the snapshot is root's and read-only.
    var savedInfo = stat()
    #expect(stat("\(dir)/snap/memory", &savedInfo) == 0)
    #expect(savedInfo.st_uid == 0 && savedInfo.st_mode & 0o777 == 0o444)

    // A jailed process cannot hand back a link to a host file as its snapshot.
    snapshotKind.withLock { $0 = "symlink" }
    try FileManager.default.createDirectory(
      atPath: "\(dir)/evil", withIntermediateDirectories: true)
    await #expect(throws: VMMError.self) {
      _ = try await vmm.saveState(handle, into: "\(dir)/evil")
    }
    #expect(!FileManager.default.fileExists(atPath: "\(dir)/evil/memory"))
    var hostFile = stat()
    #expect(stat("\(dir)/host-file", &hostFile) == 0 && hostFile.st_mode & 0o777 != 0o444)
    #expect(try String(contentsOfFile: "\(dir)/host-file", encoding: .utf8) == "secret\n")

    await vmm.kill(handle)
    #expect(!vmm.isRunning(handle))
    #expect(vmm.discover().isEmpty)

    // A restore in another sandbox's jail: the snapshot's files are linked into its chroot.
    var restored = spec
    restored.sandboxId = "restoredxyz1"
    restored.runtimeDirectory = "\(dir)/sandboxes/restoredxyz1"
    let restoreServing = serveAPIWhenLaunched(
      runtimeDirectory: restored.runtimeDirectory,
      workDirectory: vmm.workDirectory(restored.runtimeDirectory))
    let restoredHandle = try await vmm.restore(restored, from: saved)
    let restoreServer = try await restoreServing.value
    defer { restoreServer.stop() }
    let newRoot = "\(restored.runtimeDirectory)/jail/fake-firecracker/restoredxyz1/root"
    #expect(inode("\(newRoot)/restored.mem").ino == inode("\(dir)/snap/memory").ino)
    #expect(
      inode("\(newRoot)/restored.mem.vmstate").ino == inode("\(dir)/snap/devices.state").ino)
    let load = try #require(restoreServer.requests.first { $0.path == "/snapshot/load" })
    let loadBody = try jsonObject(load.body)
    #expect(loadBody["snapshot_path"] as? String == "/restored.mem.vmstate")
    #expect(
      (loadBody["mem_backend"] as? [String: Any])?["backend_path"] as? String == "/restored.mem")
    await vmm.kill(restoredHandle)
    #expect(!vmm.isRunning(restoredHandle))
  }

  @Test func jailedBlockDeviceDiskGetsItsOwnNode() throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // A block device node standing for an LVM volume (the device need not exist to be named).
    let device = "\(dir)/sandbox-vg-sandbox-x"
    try #require(mknod(device, S_IFBLK | 0o600, dev_t(7 << 8 | 201)) == 0)
    try Data(count: 512).write(to: URL(fileURLWithPath: "\(dir)/vmlinux"))
    let jail = FirecrackerJail(jailerBinary: "/usr/bin/jailer", uid: 4242, gid: 4343)
    var spec = spec(
      runtimeDirectory: "\(dir)/sandboxes/abcdefghijkl",
      disk: DiskAttachment(path: device, format: .raw))
    spec.kernelPath = "\(dir)/vmlinux"
    spec.initrdPath = ""
    try jail.prepare(spec, firecracker: "/usr/bin/firecracker")
    let node = "\(dir)/sandboxes/abcdefghijkl/jail/firecracker/abcdefghijkl/root/rootfs"
    var info = stat()
    try #require(stat(node, &info) == 0)
    #expect((info.st_mode & S_IFMT) == S_IFBLK)
    #expect(info.st_rdev == dev_t(7 << 8 | 201))
    #expect(info.st_uid == 4242 && info.st_gid == 4343)
    #expect(
      jail.arguments(
        firecracker: "/usr/bin/firecracker", sandboxId: "abcdefghijkl", runtimeDirectory: "/r")
        == [
          "--id", "abcdefghijkl", "--exec-file", "/usr/bin/firecracker", "--uid", "4242",
          "--gid", "4343", "--chroot-base-dir", "/r/jail", "--", "--api-sock",
          "firecracker.sock",
        ])
  }

  /// One fixed address, for a bridge attachment without a database.
  struct OneLease: AddressLeases {
    func lease(sandboxId: String, range: ClosedRange<Int>) async throws -> Int { 12 }
    func releaseLease(sandboxId: String) async {}
    func leaseHolders() async -> [String] { [] }
  }

  @Test func jailedVMsGetTapsTheJailedUserMayOpenAndTheAgentOnVsock() async throws {
    let runner = LVMRecordingRunner()
    runner.fail("ip", "link", "show", stderr: "Device does not exist")
    let network = BridgeNetwork(
      bridge: "br0", bridgeIp: "172.16.0.1", guestIpStart: 10, dns: "172.16.0.1",
      leases: OneLease(), agentAccess: .vsock, tapOwner: (4242, 4343), runner: runner)
    let attachment = try await network.attach(
      sandboxId: "abcdefghijkl", policy: NetworkPolicy(internet: true))
    #expect(
      runner.lines(of: "ip", "bridge") == [
        "ip link show dev tap-abcdefgh",
        "ip tuntap add dev tap-abcdefgh mode tap user 4242 group 4343",
        "ip link set dev tap-abcdefgh master br0",
        "bridge link set dev tap-abcdefgh isolated on learning off flood off",
        "bridge fdb replace 06:00:ac:10:00:0c dev tap-abcdefgh master static",
        "ip link set dev tap-abcdefgh up",
      ])
    #expect(attachment.guestIPv4 == "172.16.0.12")
    #expect(attachment.agentChannel == .vsock(port: 9998))
    // Where the vsock is, only the VMM knows (the manager asks it when attaching).
    #expect(attachment.agent == .vsock(cid: 0, port: 9998))
  }

  // MARK: Hybrid vsock

  @Test func forwarderRelaysHTTPThroughTheHybridVsockHandshake() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vsock = try FakeVsockServer(socketPath: "\(dir)/vsock.sock", answer: "OK 1073741824\n")
    defer { vsock.stop() }
    let registry = VsockForwarders()
    let (host, port) = try AgentEndpoint.hybridVsock(path: "\(dir)/vsock.sock", port: 9998)
      .tcpAddress(using: registry)
    defer { registry.stopAll(.hybrid(path: "\(dir)/vsock.sock")) }
    #expect(host == "127.0.0.1")

    // Two requests on one kept-alive connection, a third that closes it, a fourth on a new
    // connection (a second handshake).
    for attempt in 1...4 {
      var request = HTTPClientRequest(url: "http://\(host):\(port)/health?n=\(attempt)")
      if attempt == 3 { request.headers.add(name: "connection", value: "close") }
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
      let body = try await response.body.collect(upTo: 1 << 20)
      #expect(response.status.code == 200)
      #expect(String(buffer: body) == #"{"status":"ok","via":"vsock"}"#)
    }
    #expect(vsock.connectLines == ["CONNECT 9998", "CONNECT 9998"])
    #expect(vsock.requestLines == (1...4).map { "GET /health?n=\($0) HTTP/1.1" })
  }

  @Test func forwarderFailsTheConnectionWhenTheVsockAnswerIsNotOK() async throws {
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let vsock = try FakeVsockServer(socketPath: "\(dir)/vsock.sock", answer: "ERR no listener\n")
    defer { vsock.stop() }
    let forwarder = try VsockForwarder(target: .hybrid(path: "\(dir)/vsock.sock"), vsockPort: 9998)
    defer { forwarder.stop() }

    let request = HTTPClientRequest(url: "http://127.0.0.1:\(forwarder.port)/health")
    await #expect(throws: (any Error).self) {
      let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
      _ = try await response.body.collect(upTo: 1 << 20)
    }
    #expect(vsock.connectLines.first == "CONNECT 9998")
    #expect(vsock.requestLines.isEmpty)

    // No vsock socket at all (the VM is gone): the connection fails the same way. (Another
    // forwarder, so no pooled connection can answer.)
    let gone = try VsockForwarder(target: .hybrid(path: "\(dir)/missing.sock"), vsockPort: 9998)
    defer { gone.stop() }
    await #expect(throws: (any Error).self) {
      let response = try await HTTPClient.shared.execute(
        HTTPClientRequest(url: "http://127.0.0.1:\(gone.port)/health"), timeout: .seconds(10))
      _ = try await response.body.collect(upTo: 1 << 20)
    }
  }

  @Test func registryHandsOutOneForwarderPerSocketAndPort() async throws {
    let registry = VsockForwarders()
    let first = try registry.forwarder(to: .hybrid(path: "/tmp/vm-a/vsock.sock"), port: 9998)
    #expect(try registry.forwarder(to: .hybrid(path: "/tmp/vm-a/vsock.sock"), port: 9998) === first)
    let otherPort = try registry.forwarder(to: .hybrid(path: "/tmp/vm-a/vsock.sock"), port: 22)
    let otherVM = try registry.forwarder(to: .hybrid(path: "/tmp/vm-b/vsock.sock"), port: 9998)
    #expect(Set([first.port, otherPort.port, otherVM.port]).count == 3)
    #expect(registry.count == 3)
    #expect(
      try AgentEndpoint.tcp(host: "127.0.0.1", port: 4242).overTCP(using: registry)
        == .tcp(
          host: "127.0.0.1", port: 4242))
    #expect(
      try AgentEndpoint.hybridVsock(path: "/tmp/vm-b/vsock.sock", port: 9998).overTCP(
        using: registry) == .tcp(host: "127.0.0.1", port: otherVM.port))
    #expect(throws: VsockError.self) {
      try AgentEndpoint.hybridVsock(path: "", port: 9998).tcpAddress(using: registry)
    }

    registry.stopAll(.hybrid(path: "/tmp/vm-a/vsock.sock"))
    #expect(first.isStopped && otherPort.isStopped && !otherVM.isStopped)
    #expect(registry.count == 1)
    // A stopped forwarder no longer listens; asking again starts a new one.
    try await waitFor { !canConnect(port: first.port) }
    let again = try registry.forwarder(to: .hybrid(path: "/tmp/vm-a/vsock.sock"), port: 9998)
    #expect(again !== first)
    registry.stop(.hybrid(path: "/tmp/vm-b/vsock.sock"), port: 9998)
    registry.stop(.hybrid(path: "/tmp/vm-a/vsock.sock"), port: 9998)
    #expect(registry.count == 0)
    #expect(otherVM.isStopped && again.isStopped)
  }

  // MARK: End to end

  @Test(
    .disabled(
      if: FirecrackerHost.unavailableReason != nil,
      Comment(rawValue: FirecrackerHost.unavailableReason ?? "")))
  func bootsPausesSnapshotsAndRestoresARealFirecrackerVM() async throws {
    let kernel = FirecrackerHost.kernel!
    let dir = try temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let runner = SystemCommandRunner()
    let vmm = FirecrackerVMM(sandboxesDirectory: "\(dir)/sandboxes")
    let suffix = String(UUID().uuidString.prefix(6).lowercased())
    let taps = ["fct\(suffix)a", "fct\(suffix)b"]
    var handles: [VMHandle] = []
    // Awaited (not deferred): the test process may exit right after the test.
    func cleanUp() async {
      for handle in handles { await vmm.kill(handle) }
      for tap in taps { _ = await runner.probe(Command("ip", ["link", "del", "dev", tap])) }
    }
    do {
      for tap in taps {
        try await runner.run("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        try await runner.run("ip", "link", "set", "dev", tap, "up")
      }
      try await bootPauseSnapshotRestore(
        vmm: vmm, kernel: kernel, dir: dir, taps: taps, runner: runner
      ) { handles.append($0) }
    } catch {
      await cleanUp()
      throw error
    }
    await cleanUp()
    #expect(handles.count == 2 && handles.allSatisfy { !vmm.isRunning($0) })
  }

  static let agentKey = AgentKey.generate()

  func bootPauseSnapshotRestore(
    vmm: FirecrackerVMM, kernel: FirecrackerHost.Kernel, dir: String, taps: [String],
    runner: SystemCommandRunner, started: (VMHandle) -> Void
  ) async throws {
    func makeSpec(_ id: String, tap: String) async throws -> VMSpec {
      let disk = "\(dir)/\(id).raw"
      try await runner.run("cp", "--sparse=always", kernel.rootfs, disk)
      // The agent listens on loopback and relays AF_VSOCK port 9998 to it.
      let arguments = [
        "atelier.id=\(id)", "atelier.hostname=\(id)", "atelier.ip=10.0.9.2/24",
        "atelier.gw=10.0.9.1", "atelier.dns=10.0.9.1", "atelier.listen=127.0.0.1",
        "atelier.vsock=9998",
      ]
      // One key for both VMs: the restore keeps the original's (nothing here replaces it).
      let keyDrive = "\(dir)/sandboxes/\(id)/\(AgentKeyDrive.fileName)"
      try FileManager.default.createDirectory(
        atPath: "\(dir)/sandboxes/\(id)", withIntermediateDirectories: true)
      try Data(AgentKeyDrive.contents(key: Self.agentKey)).write(
        to: URL(fileURLWithPath: keyDrive))
      return VMSpec(
        sandboxId: id, runtimeDirectory: "\(dir)/sandboxes/\(id)", kernelPath: kernel.vmlinux,
        initrdPath: kernel.initrd, kernelArguments: arguments,
        disk: DiskAttachment(path: disk, format: .raw), vcpus: 1, memoryMb: 256,
        network: NetworkAttachment(
          backend: .tap(device: tap, mac: "06:00:0a:00:09:02"), guestIPv4: "10.0.9.2",
          prefixLength: 24, gateway: "10.0.9.1", dns: "10.0.9.1",
          agent: vmm.vsockEndpoint(port: 9998, runtimeDirectory: "\(dir)/sandboxes/\(id)"),
          agentChannel: .vsock(port: 9998)),
        agentKeyDrive: keyDrive)
    }
    func agent(_ spec: VMSpec) throws -> AgentClient {
      AgentClient(endpoint: try spec.network.agent.overTCP(), key: Self.agentKey)
    }

    let original = try await makeSpec("fcoriginal01", tap: taps[0])
    let handle = try await vmm.boot(original)
    started(handle)
    try await agent(original).waitUntilReady(
      sandboxId: original.sandboxId, timeout: .seconds(60), stillBooting: { vmm.isRunning(handle) })
    let uname = try await agent(original).exec(ExecRequest(command: "uname -r"))
    #expect(uname.exitCode == 0)

    try await vmm.pause(handle)
    try FileManager.default.createDirectory(
      atPath: "\(dir)/snap", withIntermediateDirectories: true)
    let saved = try await vmm.saveState(handle, into: "\(dir)/snap")
    #expect(FileManager.default.fileExists(atPath: saved.devicesPath))
    try await vmm.resume(handle)
    try await agent(original).waitUntilReady(
      sandboxId: original.sandboxId, timeout: .seconds(10), stillBooting: { vmm.isRunning(handle) })

    // Restored next to the still running original: its own disk, TAP and vsock socket.
    let copy = try await makeSpec("fcrestored01", tap: taps[1])
    let restored = try await vmm.restore(copy, from: saved)
    started(restored)
    try await vmm.resume(restored)
    try await agent(copy).waitUntilReady(
      sandboxId: original.sandboxId, timeout: .seconds(10),
      stillBooting: { vmm.isRunning(restored) })
    #expect(
      FileManager.default.fileExists(atPath: FirecrackerVMM.vsockSocket(copy.runtimeDirectory)))
    #expect(Set(vmm.discover().map(\.pid)) == [handle.pid, restored.pid])
  }
}

// MARK: - Helpers

func waitFor(
  timeout: Duration = .seconds(5), _ condition: @Sendable () -> Bool
) async throws {
  let deadline = ContinuousClock.now + timeout
  while !condition() {
    guard ContinuousClock.now < deadline else {
      Issue.record("condition not met within \(timeout)")
      return
    }
    try await Task.sleep(for: .milliseconds(10))
  }
}

func canConnect(port: Int) -> Bool {
  let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
  defer { close(fd) }
  var address = sockaddr_in()
  address.sin_family = sa_family_t(AF_INET)
  address.sin_port = UInt16(port).bigEndian
  address.sin_addr = in_addr(s_addr: UInt32(0x7f00_0001).bigEndian)
  return withUnsafePointer(to: &address) {
    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
      connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
    }
  }
}

/// JSON text in a form that compares equal whatever the key order and spacing.
func canonicalJSON(_ data: Data) -> String {
  guard let object = try? JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]),
    let canonical = try? JSONSerialization.data(
      withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed])
  else { return "not JSON: " + String(decoding: data, as: UTF8.self) }
  return String(decoding: canonical, as: UTF8.self)
}

/// One request as the fake API server saw it.
struct RecordedRequest: Sendable, Equatable, CustomStringConvertible {
  var method: String
  var path: String
  /// Canonical JSON, or nil without a body.
  var body: String?

  init(_ method: String, _ path: String, _ json: String?) {
    self.method = method
    self.path = path
    self.body = json.map { canonicalJSON(Data($0.utf8)) }
  }

  init(method: String, path: String, body: Data?) {
    self.method = method
    self.path = path
    self.body = body.map(canonicalJSON)
  }

  var description: String { "\(method) \(path) \(body ?? "")" }
}

/// Reads one HTTP/1.1 request (head, then Content-Length bytes) from a blocking socket.
struct HTTPRequestReader {
  let fd: Int32
  var buffer: [UInt8] = []

  mutating func next() -> (head: String, body: Data?)? {
    let separator: [UInt8] = [13, 10, 13, 10]
    while buffer.firstRange(of: separator) == nil {
      guard let chunk = UnixSocket.receive(fd), !chunk.isEmpty else { return nil }
      buffer += chunk
    }
    let end = buffer.firstRange(of: separator)!.lowerBound
    let head = String(decoding: buffer[..<end], as: UTF8.self)
    buffer.removeSubrange(..<(end + 4))
    var length = 0
    for line in head.components(separatedBy: "\r\n").dropFirst() {
      let parts = line.split(separator: ":", maxSplits: 1)
      if parts.count == 2, parts[0].lowercased() == "content-length" {
        length = Int(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
      }
    }
    while buffer.count < length {
      guard let chunk = UnixSocket.receive(fd), !chunk.isEmpty else { return nil }
      buffer += chunk
    }
    let body = length > 0 ? Data(buffer[..<length]) : nil
    buffer.removeSubrange(..<length)
    return (head, body)
  }
}

/// A Unix socket server for the fakes: one thread accepting, one per connection, until
/// `stop()`.
final class FakeUnixServer: Sendable {
  private let listener: Int32
  private let stopped = Mutex(false)

  init(socketPath: String) throws {
    listener = try UnixSocket.listen(socketPath)
  }

  func start(serving handler: @escaping @Sendable (Int32) -> Void) {
    OSThread { [self] in
      defer { close(listener) }
      while true {
        let fd = accept(listener, nil, nil)
        if fd < 0 {
          if stopped.withLock({ $0 }) { return }
          continue
        }
        OSThread { handler(fd) }.start()
      }
    }.start()
  }

  func stop() {
    stopped.withLock { stopped in
      guard !stopped else { return }
      stopped = true
      shutdown(listener, Int32(SHUT_RDWR))
    }
  }
}

/// A stand-in for Firecracker's API: HTTP/1.1 on a Unix socket, each request recorded; 204 for
/// every PUT/PATCH, the version for `GET /version`, and a 400 with `fault_message` for the
/// requests named in `failures` ("METHOD /path").
final class FakeFirecrackerAPI: Sendable {
  let socketPath: String
  private let failures: [String: String]
  /// Called with the method and path of each request before it is answered (to act as
  /// Firecracker would, e.g. write snapshot files).
  private let onRequest: @Sendable (String, String) -> Void
  private struct State {
    var requests: [RecordedRequest] = []
    var rawHeads: [String] = []
  }
  private let state = Mutex(State())
  private let server: FakeUnixServer

  init(
    socketPath: String, failures: [String: String] = [:],
    onRequest: @escaping @Sendable (String, String) -> Void = { _, _ in }
  ) throws {
    self.socketPath = socketPath
    self.failures = failures
    self.onRequest = onRequest
    server = try FakeUnixServer(socketPath: socketPath)
    server.start { [self] in self.serve($0) }
  }

  var requests: [RecordedRequest] { state.withLock { $0.requests } }
  var rawHeads: [String] { state.withLock { $0.rawHeads } }

  func stop() { server.stop() }

  /// Keeps the connection open for more requests, as Firecracker does.
  private func serve(_ fd: Int32) {
    defer { close(fd) }
    var reader = HTTPRequestReader(fd: fd)
    while let (head, body) = reader.next() {
      let requestLine = head.components(separatedBy: "\r\n").first ?? ""
      let parts = requestLine.split(separator: " ").map(String.init)
      guard parts.count == 3 else { return }
      state.withLock { state in
        state.rawHeads.append(head + "\r\n\r\n")
        state.requests.append(RecordedRequest(method: parts[0], path: parts[1], body: body))
      }
      onRequest(parts[0], parts[1])
      let answer: String
      if let fault = failures["\(parts[0]) \(parts[1])"] {
        let json = String(
          decoding: try! JSONEncoder().encode(FirecrackerFault(faultMessage: fault)), as: UTF8.self)
        answer =
          "HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
          + "Content-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
      } else if parts[0] == "GET" && parts[1] == "/" {
        let json =
          #"{"app_name":"Firecracker","id":"fake","state":"Running","vmm_version":"1.16.0"}"#
        answer =
          "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
          + "Content-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
      } else if parts[0] == "GET" && parts[1] == "/version" {
        let json = #"{"firecracker_version":"1.16.0"}"#
        answer =
          "HTTP/1.1 200 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
          + "Content-Type: application/json\r\nContent-Length: \(json.utf8.count)\r\n\r\n\(json)"
      } else {
        answer = "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n\r\n"
      }
      guard UnixSocket.sendAll(fd, Array(answer.utf8)) else { return }
    }
  }
}

/// A stand-in for Firecracker's hybrid vsock socket with a guest agent behind it: reads the
/// `CONNECT` line, sends `answer`, then serves HTTP requests.
final class FakeVsockServer: Sendable {
  private let answer: String
  private struct State {
    var connectLines: [String] = []
    var requestLines: [String] = []
  }
  private let state = Mutex(State())
  private let server: FakeUnixServer

  init(socketPath: String, answer: String) throws {
    self.answer = answer
    server = try FakeUnixServer(socketPath: socketPath)
    server.start { [self] in self.serve($0) }
  }

  var connectLines: [String] { state.withLock { $0.connectLines } }
  var requestLines: [String] { state.withLock { $0.requestLines } }

  func stop() { server.stop() }

  private func serve(_ fd: Int32) {
    defer { close(fd) }
    var line: [UInt8] = []
    while let byte = UnixSocket.receive(fd, size: 1), byte.count == 1, byte[0] != 10 {
      line += byte
    }
    state.withLock { $0.connectLines.append(String(decoding: line, as: UTF8.self)) }
    // Serves HTTP even after a refusal: only the forwarder's check can make the client fail.
    guard UnixSocket.sendAll(fd, Array(answer.utf8)) else { return }
    var reader = HTTPRequestReader(fd: fd)
    while let (head, _) = reader.next() {
      state.withLock {
        $0.requestLines.append(head.components(separatedBy: "\r\n").first ?? "")
      }
      let body = #"{"status":"ok","via":"vsock"}"#
      let response =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
      guard UnixSocket.sendAll(fd, Array(response.utf8)),
        !head.lowercased().contains("\r\nconnection: close")
      else { return }
    }
  }
}

/// What the end-to-end test needs, or why it cannot run here.
enum FirecrackerHost {
  struct Kernel {
    var vmlinux: String
    var initrd: String
    var rootfs: String
  }

  static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path

  /// An uncompressed kernel next to the shared test image's `vmlinuz`, and the tiny image.
  static let kernel: Kernel? = {
    let data = "\(repositoryRoot)/.build/atelier-test-data"
    let kernels = (try? FileManager.default.contentsOfDirectory(atPath: "\(data)/kernels")) ?? []
    let rootfs = "\(data)/images/tiny/current/rootfs.ext4"
    for version in kernels.sorted().reversed() {
      let dir = "\(data)/kernels/\(version)"
      if FileManager.default.fileExists(atPath: "\(dir)/vmlinux"),
        FileManager.default.fileExists(atPath: rootfs)
      {
        return Kernel(vmlinux: "\(dir)/vmlinux", initrd: "\(dir)/initrd.img", rootfs: rootfs)
      }
    }
    return nil
  }()

  static let unavailableReason: String? = {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    guard path.split(separator: ":").contains(where: { access("\($0)/firecracker", X_OK) == 0 })
    else { return "needs Firecracker: no `firecracker` binary in PATH" }
    let kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC)
    guard kvm >= 0 else {
      return "needs KVM: /dev/kvm cannot be opened (\(String(cString: strerror(errno))))"
    }
    close(kvm)
    guard getuid() == 0 else { return "needs root to create TAP devices" }
    guard kernel != nil else {
      return "needs an uncompressed vmlinux next to vmlinuz in .build/atelier-test-data/kernels "
        + "and the tiny image (scripts/test builds them)"
    }
    return nil
  }()
}
