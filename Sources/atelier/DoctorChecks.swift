import AtelierCore
import AtelierHost
import Foundation

/// The findings of `atelier doctor`, each from the same code the manager uses (the tool
/// lookup, the KVM probe and its cached verdict, the recipe search), so that doctor and the
/// manager agree. Lists in sentences go through `Prose.list`, which never prints an empty one.
struct DoctorChecks {
  typealias Finding = Doctor.Finding
  let config: Config
  let tools = HostTools()
  let runner = SystemCommandRunner()
  let root = getuid() == 0

  func all() async -> [Finding] {
    var findings = [user(), dataFolder()]
    let qemu = tools.find(config.qemuBinary)
    findings.append(await qemuFinding(qemu))
    let kernel = KernelProvider(
      kernelsDirectory: config.kernelsDir, cacheDirectory: config.cacheDir, runner: runner
    ).installed()
    let kvm = await KVMStory.assess(config: config, kernel: kernel, qemuFound: qemu != nil)
    findings += [kvm.finding, acceleration(kvm)]
    findings.append(
      Finding(
        name: "kernel", ok: kernel != nil,
        detail: kernel.map { "\($0.version) in \(config.kernelsDir)" }
          ?? "none prepared yet in \(config.kernelsDir)",
        fix: "atelier images build tiny (downloads Debian's cloud kernel)"))
    findings += [images(), recipes()]
    findings += toolFindings()
    findings.append(await agent())
    findings += [firecracker(kvm), await lvm(), await bridge(), vhostVsock()]
    findings.append(await NetworkChecks.egress(config, runner: runner))
    return findings
  }

  func user() -> Finding {
    let name = getpwuid(getuid()).map { String(cString: $0.pointee.pw_name) } ?? "uid \(getuid())"
    let detail =
      root
      ? "root: every backend is available"
      : "\(name) (not root): file storage and user-mode networking; LVM and the bridge need root"
    return Finding(name: "user", ok: true, detail: detail, fix: "")
  }

  /// The data folder must be this user's: the manager writes its database, token and sockets
  /// there, and QEMU (running as this user) its files.
  func dataFolder() -> Finding {
    let path = config.dataDir
    var status = stat()
    guard stat(path, &status) == 0 else {
      let parent = (path as NSString).deletingLastPathComponent
      return Finding(
        name: "data folder", ok: true,
        detail: "\(path) (created at the first `atelier serve` or image build)"
          + (existingAncestorWritable(parent) ? "" : "; its parent is not writable"),
        fix: "")
    }
    let writable = access(path, W_OK) == 0
    let mine = status.st_uid == getuid()
    var problems: [String] = []
    if !writable { problems.append("not writable") }
    if !mine { problems.append("owned by uid \(status.st_uid), not by you") }
    return Finding(
      name: "data folder", ok: problems.isEmpty,
      detail: problems.isEmpty
        ? "\(path) (yours)" : "\(path): \(Prose.list(problems, empty: ""))",
      fix: "use a folder of your own: ATELIER_DATA_DIR=$HOME/.local/share/atelier")
  }

  func existingAncestorWritable(_ path: String) -> Bool {
    var current = path
    while !FileManager.default.fileExists(atPath: current) && current != "/" {
      current = (current as NSString).deletingLastPathComponent
    }
    return access(current, W_OK) == 0
  }

  func qemuFinding(_ qemu: String?) async -> Finding {
    var version = ""
    if let qemu {
      let output = await runner.probe(Command(qemu, ["--version"], timeout: .seconds(10)))
      version = output.stdout.split(separator: "\n").first.map(String.init) ?? ""
    }
    return Finding(
      name: "qemu", ok: qemu != nil || config.vmm != .qemu,
      detail: qemu.map { version.isEmpty ? $0 : "\($0) (\(version))" }
        ?? MissingTool(name: config.qemuBinary, searched: tools.directories).description,
      fix: "apt-get install qemu-system-x86 (or set ATELIER_QEMU_BINARY)")
  }

  func acceleration(_ kvm: KVMStory) -> Finding {
    let setting = "ATELIER_ACCEL=\(config.accel.rawValue)"
    switch config.accel {
    case .tcg:
      return Finding(
        name: "acceleration", ok: true,
        detail: "\(setting): guests run under TCG"
          + (kvm.works ? " (KVM works here: ATELIER_ACCEL=auto would use it)" : ""),
        fix: "")
    case .kvm:
      return Finding(
        name: "acceleration", ok: kvm.mayWork,
        detail: "\(setting): guests run under KVM; \(kvm.phrase)",
        fix: "set ATELIER_ACCEL=auto (KVM only once a probe boot proves it works, else TCG)")
    case .auto:
      return Finding(
        name: "acceleration", ok: true,
        detail: kvm.works
          ? "\(setting): guests run under KVM; \(kvm.phrase)"
          : "\(setting): guests run under TCG, slower; \(kvm.phrase)",
        fix: "")
    }
  }

  func images() -> Finding {
    let built = ImageCatalog(directory: config.imagesDir).list().map(\.name)
    return Finding(
      name: "images", ok: !built.isEmpty,
      detail: built.isEmpty
        ? "none built in \(config.imagesDir)"
        : "\(Prose.list(built, empty: "")) in \(config.imagesDir)",
      fix: "atelier images build tiny")
  }

  func recipes() -> Finding {
    let locations = recipeLocations(config)
    let names = locations.available()
    return Finding(
      name: "recipes", ok: !names.isEmpty,
      detail: names.isEmpty
        ? "none found (looked in \(locations.directories.joined(separator: ", ")))"
        : "\(Prose.list(names, empty: "")) (from \(locations.firstWithRecipes ?? ""))",
      fix:
        "set ATELIER_IMAGES_DIR to the images/ folder of a checkout, or install them with `atelier init --local`"
    )
  }

  /// One finding per part of the configuration, naming the package of each missing tool.
  func toolFindings() -> [Finding] {
    var findings = RequiredTools.groups(for: config, root: root).map { group in
      let missing = group.tools.filter { tools.find($0) == nil }
      let packages = Prose.packages(for: missing)
      return Finding(
        name: "tools: \(group.name)", ok: missing.isEmpty,
        detail: missing.isEmpty
          ? "\(Prose.list(group.tools, empty: "")) found"
          : "missing \(Prose.list(missing, empty: "")) (looked in PATH, /usr/sbin and /sbin)",
        fix: packages.isEmpty ? "" : "apt-get install \(packages.joined(separator: " "))")
    }
    // Only recipes with a Debian base (dev-base) need it, and only as root: never a failure.
    let debootstrap = tools.find("debootstrap")
    findings.append(
      Finding(
        name: "debootstrap", ok: true,
        detail: debootstrap.map { "\($0) (for Debian-based images such as dev-base, as root)" }
          ?? "not installed: only Debian-based images such as dev-base need it "
          + "(apt-get install debootstrap; builds them as root)",
        fix: ""))
    return findings
  }

  func agent() async -> Finding {
    let agent = resolvedAgentPath(config)
    guard FileManager.default.isExecutableFile(atPath: agent) else {
      return Finding(
        name: "agent", ok: false, detail: "no guest agent at \(agent)",
        fix: "swift build -c release --static-swift-stdlib (or set ATELIER_AGENT_PATH)")
    }
    // The guest has no Swift runtime: the agent must carry its own.
    let dynamic = await runner.probe(Command("ldd", [agent])).stdout.contains("libswiftCore")
    return Finding(
      name: "agent", ok: !dynamic,
      detail: agent + (dynamic ? ": links the Swift runtime dynamically, unusable in a guest" : ""),
      fix: "swift build -c release --static-swift-stdlib (or set ATELIER_AGENT_PATH)")
  }

  func configured(_ yes: Bool) -> String { yes ? "configured" : "not configured" }

  func firecracker(_ kvm: KVMStory) -> Finding {
    let binary = tools.find(config.firecrackerBin)
    var parts = [binary ?? "\(config.firecrackerBin) not found", kvm.phrase]
    var jailReady = true
    if !config.firecrackerJailer.isEmpty {
      let jailer = tools.find(config.firecrackerJailer)
      let user = getpwnam(config.jailerUser) != nil
      jailReady = jailer != nil && user
      parts.append(
        "jailer " + (jailer ?? "\(config.firecrackerJailer) missing")
          + (user ? " as \(config.jailerUser)" : ", no user \(config.jailerUser)"))
    }
    let isConfigured = config.vmm == .firecracker
    return Finding(
      name: "firecracker",
      ok: !isConfigured || (binary != nil && kvm.mayWork && jailReady),
      detail: "\(configured(isConfigured)); " + parts.joined(separator: "; "),
      fix:
        "install Firecracker (github.com/firecracker-microvm/firecracker releases) on a host with KVM, or use ATELIER_VMM=qemu"
    )
  }

  func lvm() async -> Finding {
    let isConfigured = config.storage == .lvm
    let pool = "\(config.lvmVg)/\(config.lvmPool)"
    guard root else {
      return Finding(
        name: "lvm", ok: !isConfigured,
        detail: "\(configured(isConfigured)); LVM storage needs root (thin pool \(pool))",
        fix: "run the manager as root, or use ATELIER_STORAGE=file")
    }
    guard tools.find("lvs") != nil else {
      return Finding(
        name: "lvm", ok: !isConfigured,
        detail: "\(configured(isConfigured)); no LVM tools (lvs not found)",
        fix: "apt-get install lvm2 thin-provisioning-tools, then atelier init --storage loop:100G")
    }
    let listed = await runner.probe(
      Command("lvs", ["--noheadings", "-o", "lv_name", pool], timeout: .seconds(30)))
    let present = listed.exitCode == 0
    return Finding(
      name: "lvm", ok: !isConfigured || present,
      detail: "\(configured(isConfigured)); "
        + (present ? "thin pool \(pool) present" : "no thin pool \(pool)"),
      fix: "atelier init --storage loop:100G (or device:/dev/X), or use ATELIER_STORAGE=file")
  }

  func bridge() async -> Finding {
    let isConfigured = config.network == .bridge
    guard root else {
      return Finding(
        name: "bridge", ok: !isConfigured,
        detail: "\(configured(isConfigured)); bridge networking needs root",
        fix: "run the manager as root, or use ATELIER_NETWORK=user")
    }
    let plan = await BridgeSetup(config: config, runner: runner).plan()
    let missing = plan.filter { !$0.done }.map(\.description)
    return Finding(
      name: "bridge", ok: !isConfigured || missing.isEmpty,
      detail: "\(configured(isConfigured)); "
        + (missing.isEmpty
          ? "\(config.bridgeName) and its rules in place"
          : "missing: \(missing.joined(separator: "; "))"),
      fix: "atelier network setup (as root), or use ATELIER_NETWORK=user")
  }

  func vhostVsock() -> Finding {
    let usable = QEMUMicroVM.vhostVsockUsable()
    return Finding(
      name: "vhost-vsock",
      ok: config.vmm != .qemu || config.qemuVsock != .on || usable,
      detail: "ATELIER_QEMU_VSOCK=\(config.qemuVsock.rawValue); "
        + (usable
          ? "/dev/vhost-vsock usable (QEMU agents over vsock)"
          : "no usable /dev/vhost-vsock (QEMU agents use a loopback port forward)"),
      fix: "modprobe vhost_vsock, or set ATELIER_QEMU_VSOCK=auto")
  }
}

/// What is known about KVM here, told the same way on every line that mentions it: the
/// device's access, then the probe's verdict (the manager's own, cached in the data folder).
struct KVMStory {
  let device: KVMDevice
  /// Set when the device is accessible and the probe could run (a kernel and QEMU exist).
  let verdict: AccelerationProbe.Verdict?

  var works: Bool { device == .accessible && verdict?.acceleration == .kvm }
  /// Not known to be broken: accessible, and no probe said otherwise.
  var mayWork: Bool { device == .accessible && verdict.map { $0.acceleration == .kvm } ?? true }

  static func assess(config: Config, kernel: GuestKernel?, qemuFound: Bool) async -> KVMStory {
    let device = KVMDevice.check()
    guard device == .accessible, let kernel, qemuFound else {
      return KVMStory(device: device, verdict: nil)
    }
    let probe = AccelerationProbe(
      cachePath: "\(config.dataDir)/accel-probe.json", qemuBinary: config.qemuBinary)
    if !hasVerdict(cachePath: "\(config.dataDir)/accel-probe.json", config: config, kernel: kernel)
    {
      FileHandle.writeError("probing KVM with a short test boot (at most 8 s)…")
    }
    return KVMStory(device: device, verdict: await probe.resolve(.auto, kernel: kernel))
  }

  /// Whether the probe has a verdict for this kernel and QEMU already (else it boots one).
  static func hasVerdict(cachePath: String, config: Config, kernel: GuestKernel) -> Bool {
    guard let data = FileManager.default.contents(atPath: cachePath),
      let cached = try? JSONDecoder.atelier.decode(AccelerationProbe.Verdict.self, from: data)
    else { return false }
    return cached.kernel == kernel.kernelPath && cached.qemuBinary == config.qemuBinary
  }

  var phrase: String {
    switch device {
    case .missing: return "no /dev/kvm"
    case .noAccess: return "no access to /dev/kvm"
    case .accessible:
      guard let verdict else {
        return "/dev/kvm accessible, KVM not probed yet: no guest kernel or QEMU to probe with"
      }
      // The probe's reason ends with what the manager does about it; each line says that.
      let reason = verdict.reason.replacingOccurrences(of: "; using TCG", with: "")
      return verdict.acceleration == .kvm
        ? "KVM works: \(reason)" : "KVM does not run guests here: \(reason)"
    }
  }

  var finding: Doctor.Finding {
    switch device {
    case .missing:
      return Doctor.Finding(
        name: "kvm", ok: true, detail: "no /dev/kvm: guests run under TCG (slower)", fix: "")
    case .noAccess(let permissions, let fix):
      // Not a failure (TCG works), but the fix is shown: it is the user's to apply.
      return Doctor.Finding(
        name: "kvm", ok: true,
        detail: "no access to /dev/kvm (\(permissions)): guests run under TCG; for KVM: \(fix)",
        fix: "")
    case .accessible:
      return Doctor.Finding(name: "kvm", ok: true, detail: phrase, fix: "")
    }
  }
}
