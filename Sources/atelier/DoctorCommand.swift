import ArgumentParser
import AtelierCore
import AtelierHost
import AtelierServer
import Foundation

struct Doctor: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Check this host: VMM, acceleration, kernel, images, data folder, tools.")

  @Flag(help: "Print JSON.") var json = false

  struct Finding: Encodable {
    var name: String
    var ok: Bool
    var detail: String
    var fix: String
  }

  func run() async throws {
    let config = try loadConfig()
    var findings: [Finding] = []
    let runner = SystemCommandRunner()

    let qemu = ManagerBootstrap.findExecutable(config.qemuBinary)
    var qemuVersion = ""
    if let qemu {
      let output = await runner.probe(Command(qemu, ["--version"]))
      qemuVersion = output.stdout.split(separator: "\n").first.map(String.init) ?? ""
    }
    findings.append(
      Finding(
        name: "qemu", ok: qemu != nil,
        detail: qemu.map { "\($0) \(qemuVersion)" } ?? "\(config.qemuBinary) not found",
        fix: "apt-get install qemu-system-x86 (or set ATELIER_QEMU_BINARY)"))

    let kvmUsable = access("/dev/kvm", R_OK | W_OK) == 0
    var accelDetail =
      kvmUsable ? "/dev/kvm present" : "/dev/kvm not usable: guests run under TCG (slower)"
    if let data = FileManager.default.contents(atPath: "\(config.dataDir)/accel-probe.json"),
      let verdict = try? JSONDecoder.atelier.decode(AccelerationProbe.Verdict.self, from: data)
    {
      accelDetail = "\(verdict.acceleration.rawValue): \(verdict.reason)"
    }
    findings.append(
      Finding(
        name: "acceleration", ok: true,
        detail: "ATELIER_ACCEL=\(config.accel.rawValue); \(accelDetail)",
        fix: ""))

    let kernel = KernelProvider(
      kernelsDirectory: config.kernelsDir, cacheDirectory: config.cacheDir, runner: runner
    ).installed()
    findings.append(
      Finding(
        name: "kernel", ok: kernel != nil,
        detail: kernel.map { "\($0.version) in \(config.kernelsDir)" } ?? "none prepared",
        fix: "atelier images build tiny (downloads Debian's cloud kernel)"))

    let images = ImageCatalog(directory: config.imagesDir).list()
    findings.append(
      Finding(
        name: "images", ok: !images.isEmpty,
        detail: images.isEmpty ? "none built" : images.map(\.name).joined(separator: ", "),
        fix: "atelier images build tiny"))

    var isDirectory: ObjCBool = false
    let dataExists = FileManager.default.fileExists(
      atPath: config.dataDir, isDirectory: &isDirectory)
    let writable = dataExists && access(config.dataDir, W_OK) == 0
    findings.append(
      Finding(
        name: "data folder", ok: writable || !dataExists,
        detail: dataExists
          ? "\(config.dataDir)\(writable ? "" : " (not writable)")"
          : "\(config.dataDir) (created at first start)",
        fix: "set ATELIER_DATA_DIR to a writable folder"))

    let tools = ["apt-get", "dpkg-deb", "mkfs.ext4"]
    let missing = tools.filter { ManagerBootstrap.findExecutable($0) == nil }
    findings.append(
      Finding(
        name: "image tools", ok: missing.isEmpty,
        detail: missing.isEmpty
          ? tools.joined(separator: ", ") : "missing: \(missing.joined(separator: ", "))",
        fix: "apt-get install e2fsprogs (apt-get and dpkg-deb come with Debian)"))

    let agent = resolvedAgentPath(config)
    let agentExists = FileManager.default.isExecutableFile(atPath: agent)
    // The guest has no Swift runtime: the agent must carry its own.
    var dynamicSwift = false
    if agentExists {
      dynamicSwift = await runner.probe(Command("ldd", [agent])).stdout.contains("libswiftCore")
    }
    findings.append(
      Finding(
        name: "agent", ok: agentExists && !dynamicSwift,
        detail: agent
          + (dynamicSwift ? " (links the Swift runtime dynamically: unusable in a guest)" : ""),
        fix: "swift build -c release --static-swift-stdlib (or set ATELIER_AGENT_PATH)"))

    findings += await driverFindings(config: config, runner: runner)

    if json {
      try printJSON(findings)
      if findings.contains(where: { !$0.ok }) { throw ExitCode(1) }
      return
    }
    for finding in findings {
      let mark = finding.ok ? "ok  " : "FAIL"
      print(
        "\(mark) \(finding.name.padding(toLength: 13, withPad: " ", startingAt: 0)) \(finding.detail)"
      )
      if !finding.ok && !finding.fix.isEmpty { print("     fix: \(finding.fix)") }
    }
    if findings.contains(where: { !$0.ok }) { throw ExitCode(1) }
  }

  /// Readiness of every backend; only the configured ones can fail.
  func driverFindings(config: Config, runner: any CommandRunning) async -> [Finding] {
    var findings: [Finding] = []
    let firecracker = ManagerBootstrap.findExecutable(config.firecrackerBin)
    let kvm = access("/dev/kvm", R_OK | W_OK) == 0
    // The jailer, when configured, and the user it runs Firecracker as.
    var jailDetail = ""
    var jailReady = true
    if !config.firecrackerJailer.isEmpty {
      let jailer = ManagerBootstrap.findExecutable(config.firecrackerJailer)
      let user = getpwnam(config.jailerUser) != nil
      jailReady = jailer != nil && user
      jailDetail =
        "; jailer " + (jailer ?? "\(config.firecrackerJailer) missing")
        + (user ? " as \(config.jailerUser)" : ", no user \(config.jailerUser)")
    }
    let firecrackerReady = firecracker != nil && kvm && jailReady
    findings.append(
      Finding(
        name: "firecracker", ok: config.vmm != .firecracker || firecrackerReady,
        detail: (config.vmm == .firecracker ? "configured; " : "not configured; ")
          + (firecracker.map { "\($0)" } ?? "no \(config.firecrackerBin) binary")
          + (kvm ? ", /dev/kvm usable" : ", no usable /dev/kvm") + jailDetail,
        fix:
          "install Firecracker (github.com/firecracker-microvm/firecracker releases) on a host with KVM, or use ATELIER_VMM=qemu"
      ))
    let pool = await runner.probe(
      Command("lvs", ["--noheadings", "-o", "lv_name", "\(config.lvmVg)/\(config.lvmPool)"]))
    findings.append(
      Finding(
        name: "lvm", ok: config.storage != .lvm || pool.exitCode == 0,
        detail: (config.storage == .lvm ? "configured; " : "not configured; ")
          + (pool.exitCode == 0
            ? "thin pool \(config.lvmVg)/\(config.lvmPool) present"
            : "no thin pool \(config.lvmVg)/\(config.lvmPool)"),
        fix: "atelier init --storage loop:100G (or device:/dev/X), or use ATELIER_STORAGE=file"))
    let bridge = await BridgeSetup(config: config, runner: runner).plan()
    let missing = bridge.filter { !$0.done }.map(\.description)
    findings.append(
      Finding(
        name: "bridge", ok: config.network != .bridge || missing.isEmpty,
        detail: (config.network == .bridge ? "configured; " : "not configured; ")
          + (missing.isEmpty
            ? "\(config.bridgeName) and rules in place"
            : "missing: \(missing.joined(separator: "; "))"),
        fix: "atelier network setup (as root), or use ATELIER_NETWORK=user"))
    let vhostVsock = QEMUMicroVM.vhostVsockUsable()
    findings.append(
      Finding(
        name: "vhost-vsock",
        ok: config.vmm != .qemu || config.qemuVsock != .on || vhostVsock,
        detail: "ATELIER_QEMU_VSOCK=\(config.qemuVsock.rawValue); "
          + (vhostVsock
            ? "/dev/vhost-vsock usable (QEMU agents over vsock)"
            : "no usable /dev/vhost-vsock (QEMU agents use a loopback port forward)"),
        fix: "modprobe vhost_vsock, or set ATELIER_QEMU_VSOCK=auto"))
    return findings
  }
}
