import ArgumentParser
import AtelierCore
import AtelierHost
import AtelierServer
import Crypto
import Foundation

/// `atelier init`: provisions this host for production, idempotently (a second run changes
/// nothing). Every step first checks whether it is already done.
struct Init: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract:
      "Provision this host: packages, service user, folders, config, storage, network, systemd units, image.",
    discussion: """
      With --local, only installs this binary, the guest agent and the image recipes: into \
      ~/.local (bin/ and share/atelier/images/) for a normal user, /usr/local for root. \
      No root needed; nothing else on the host changes.
      """)

  @Flag(help: "Do not ask before destructive steps.") var yes = false
  @Flag(help: "Print the plan; change nothing.") var dryRun = false
  @Option(
    help: "file, loop:SIZE (e.g. loop:50G, an LVM thin pool on a loop file) or device:/dev/X.")
  var storage = "file"
  @Option(help: "user or bridge.") var network = "bridge"
  @Option(help: "qemu or firecracker.") var vmm = "qemu"
  @Option(
    help: "With --vmm firecracker: run each VM under this Firecracker jailer, as the atelier user.")
  var jailer = ""
  @Option(
    name: .customLong("image"),
    help: "Image to build (tiny, dev-base) or none; default tiny, with --local none.")
  var imageOption: String?
  var image: String { imageOption ?? (local ? "none" : "tiny") }
  @Option(help: "Host TCP ports guests on the bridge may reach (comma-separated).") var allowPorts =
    ""
  @Option(help: "Install into this root instead of / (files only; for packaging and tests).")
  var root = "/"
  @Flag(help: "Do not install Debian packages.") var skipPackages = false
  @Flag(
    help:
      "Only install the binaries and image recipes (~/.local for a user, /usr/local for root).")
  var local = false
  @Option(help: "With --local: install under this prefix instead.") var prefix: String?

  struct Step {
    var description: String
    /// Why it cannot run here, if it cannot.
    var skipReason: String? = nil
    var isDone: () async -> Bool
    var apply: () async throws -> Void
    var destructive = false
  }

  var realRoot: Bool { URL(fileURLWithPath: root).standardizedFileURL.path == "/" }
  func path(_ absolute: String) -> String {
    realRoot ? absolute : URL(fileURLWithPath: root).appendingPathComponent(absolute).path
  }

  func validate() throws {
    guard ["user", "bridge"].contains(network) else {
      throw ValidationError("--network takes user or bridge")
    }
    guard ["qemu", "firecracker"].contains(vmm) else {
      throw ValidationError("--vmm takes qemu or firecracker")
    }
    if !jailer.isEmpty && (vmm != "firecracker" || !jailer.hasPrefix("/")) {
      throw ValidationError("--jailer takes an absolute path, with --vmm firecracker")
    }
    if vmm == "firecracker" && network == "user" {
      throw ValidationError("firecracker has no user-mode networking: use --network bridge")
    }
    _ = try storageChoice()
    if local {
      guard storage == "file", jailer.isEmpty, allowPorts.isEmpty, !skipPackages else {
        throw ValidationError(
          "--local installs files only: it takes no --storage, --jailer, --allow-ports or --skip-packages"
        )
      }
    }
    if let prefix, !local || !prefix.hasPrefix("/") {
      throw ValidationError("--prefix takes an absolute path, with --local")
    }
  }

  enum StorageChoice { case file, loop(bytes: UInt64), device(String) }

  func storageChoice() throws -> StorageChoice {
    if storage == "file" { return .file }
    if storage.hasPrefix("loop:") {
      guard let bytes = Self.parseSize(String(storage.dropFirst(5))) else {
        throw ValidationError("--storage loop:SIZE takes a size such as 50G")
      }
      return .loop(bytes: bytes)
    }
    if storage.hasPrefix("device:/dev/") { return .device(String(storage.dropFirst(7))) }
    throw ValidationError("--storage takes file, loop:SIZE or device:/dev/X")
  }

  static func parseSize(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    guard let last = text.last else { return nil }
    if let unit = units[Character(last.uppercased())], let number = UInt64(text.dropLast()) {
      return number * unit
    }
    return UInt64(text)
  }

  func run() async throws {
    if realRoot && getuid() != 0 && !dryRun && !local {
      throw CLIError(
        "atelier init must run as root (or use --dry-run); `atelier init --local` installs for this user"
      )
    }
    let runner = SystemCommandRunner()
    let steps = local ? try localSteps() : try await plan(runner: runner)
    try await execute(steps)
    if local { printPathHint() }
  }

  func execute(_ steps: [Step]) async throws {
    var changed = 0
    for step in steps {
      if let reason = step.skipReason {
        print("-  \(step.description) (skipped: \(reason))")
        continue
      }
      if await step.isDone() {
        print("ok \(step.description)")
        continue
      }
      if dryRun {
        print("-> \(step.description)\(step.destructive ? " (DESTRUCTIVE)" : "")")
        changed += 1
        continue
      }
      if step.destructive && !yes {
        print(
          "\(step.description) destroys what is on the target. Type yes to go on: ", terminator: "")
        guard readLine()?.trimmingCharacters(in: .whitespaces) == "yes" else {
          throw CLIError("stopped; nothing destroyed")
        }
      }
      print("-> \(step.description)")
      do { try await step.apply() } catch { throw CLIError("\(step.description) failed: \(error)") }
      changed += 1
    }
    if dryRun {
      print(changed == 0 ? "nothing to do" : "\(changed) step(s) would run")
    } else {
      print(changed == 0 ? "nothing to do: this host is ready" : "done: \(changed) step(s) applied")
    }
  }

  // MARK: The plan

  static let packages = [
    "qemu-system-x86", "qemu-utils", "e2fsprogs", "debootstrap", "iproute2", "iptables", "nftables",
    "lvm2",
    "thin-provisioning-tools", "ca-certificates", "curl",
  ]

  func plan(runner: any CommandRunning) async throws -> [Step] {
    var steps: [Step] = []
    let notRealRoot = realRoot ? nil : "installing into \(root), not on this host"
    steps.append(
      Step(
        description: "Debian 12 host", skipReason: nil,
        isDone: {
          let release = (try? String(contentsOfFile: "/etc/os-release", encoding: .utf8)) ?? ""
          return release.contains("ID=debian") && release.contains("VERSION_ID=\"12\"")
        },
        apply: { throw CLIError("this is not Debian 12; Atelier is tested there only") }))
    steps.append(
      Step(
        // Access only: whether KVM runs guests is the manager's probe boot to decide.
        description: "/dev/kvm accessible (KVM is used only once a probe boot proves it works)",
        skipReason: KVMDevice.check() == .accessible
          ? nil : "\(KVMDevice.check().reason): guests will run under TCG",
        isDone: { true }, apply: {}))
    let installed = (try? String(contentsOfFile: "/var/lib/dpkg/status", encoding: .utf8)) ?? ""
    let missing = Self.packages.filter {
      !installed.contains("Package: \($0)\nStatus: install ok installed")
    }
    steps.append(
      Step(
        description: "Debian packages: \(Self.packages.joined(separator: " "))",
        skipReason: skipPackages ? "--skip-packages" : notRealRoot,
        isDone: { missing.isEmpty },
        apply: {
          try await runner.run(Command("apt-get", ["update", "-q"], timeout: .seconds(600)))
          try await runner.run(
            Command(
              "apt-get", ["install", "-y", "-q", "--no-install-recommends"] + missing,
              environment: ["DEBIAN_FRONTEND": "noninteractive"], timeout: .seconds(1800)))
        }))
    steps.append(
      Step(
        description: "service user atelier (group kvm)", skipReason: notRealRoot,
        isDone: { await runner.probe(Command("id", ["-u", "atelier"])).exitCode == 0 },
        apply: {
          try await runner.run(
            "useradd", "--system", "--home-dir", "/var/lib/atelier", "--shell", "/usr/sbin/nologin",
            "atelier")
          _ = await runner.probe(Command("usermod", ["-aG", "kvm", "atelier"]))
        }))
    for (folder, mode) in [
      ("/var/lib/atelier", 0o700), ("/etc/atelier", 0o755), ("/var/log/atelier", 0o750),
    ] {
      let target = path(folder)
      steps.append(
        Step(
          description: "folder \(target)",
          isDone: { FileManager.default.fileExists(atPath: target) },
          apply: {
            try FileManager.default.createDirectory(
              atPath: target, withIntermediateDirectories: true,
              attributes: [.posixPermissions: mode])
          }))
    }
    steps += try installSteps(prefix: path("/usr/local"))
    steps.append(fileStep(path("/etc/atelier/config.json"), configFile()))
    steps += try storageSteps(runner: runner)
    if network == "bridge" {
      let setup = BridgeSetup(
        bridge: "br0", bridgeIp: "172.16.0.1", allowedPorts: allowedPorts(), runner: runner)
      let current = await setup.plan()
      steps.append(
        Step(
          description: "bridge br0 172.16.0.1/24, NAT out, guests kept from host services",
          skipReason: notRealRoot, isDone: { current.allSatisfy(\.done) },
          apply: { try await setup.apply() }))
    }
    for (name, content) in systemdUnits() {
      steps.append(fileStep(path("/etc/systemd/system/\(name)"), content))
    }
    let systemd = FileManager.default.fileExists(atPath: "/run/systemd/system")
    steps.append(
      Step(
        description: "systemd: enable and start atelier-manager",
        skipReason: notRealRoot ?? (systemd ? nil : "systemd is not running here"),
        isDone: {
          let enabled = await runner.probe(
            Command("systemctl", ["is-enabled", "--quiet", "atelier-manager"]))
          let active = await runner.probe(
            Command("systemctl", ["is-active", "--quiet", "atelier-manager"]))
          return enabled.exitCode == 0 && active.exitCode == 0
        },
        apply: {
          try await runner.run("systemctl", "daemon-reload")
          var units = ["atelier-manager.service"]
          if network == "bridge" { units.append("atelier-network.service") }
          if case .loop = try storageChoice() { units.append("atelier-loop.service") }
          try await runner.run(Command("systemctl", ["enable", "--now"] + units))
        }))
    if image != "none" {
      let dataDir = path("/var/lib/atelier")
      steps.append(
        Step(
          description: "image \(image)", skipReason: notRealRoot,
          isDone: { ImageCatalog(directory: "\(dataDir)/images").image(named: image) != nil },
          apply: {
            let result = await runner.probe(
              Command(
                "/usr/local/bin/atelier", ["images", "build", image],
                environment: ["ATELIER_CONFIG": "/etc/atelier/config.json"], timeout: .seconds(3600)
              ))
            guard result.exitCode == 0 else { throw CLIError(result.stderr) }
          }))
    }
    return steps
  }

  func allowedPorts() -> [Int] {
    allowPorts.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
  }

  /// A file with exactly this content (done when it already has it).
  func fileStep(_ target: String, _ content: String, mode: Int = 0o644) -> Step {
    Step(
      description: "file \(target)",
      isDone: { (try? String(contentsOfFile: target, encoding: .utf8)) == content },
      apply: {
        try FileManager.default.createDirectory(
          atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try content.write(toFile: target, atomically: true, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: target)
      })
  }

  func storageSteps(runner: any CommandRunning) throws -> [Step] {
    let choice = try storageChoice()
    let notRealRoot = realRoot ? nil : "installing into \(root), not on this host"
    switch choice {
    case .file: return []
    case .loop(let bytes):
      let setup = LVMPoolSetup(
        storage: .loop(path: "/var/lib/atelier/lvm.img", sizeBytes: bytes),
        volumeGroup: "sandbox-vg",
        thinPool: "thin-pool", runner: runner)
      return [
        Step(
          description: "LVM thin pool sandbox-vg/thin-pool on a \(storage.dropFirst(5)) loop file",
          skipReason: notRealRoot, isDone: { await setup.plan().allSatisfy(\.done) },
          apply: { try await setup.apply() }),
        fileStep(path("/etc/systemd/system/atelier-loop.service"), loopUnit()),
      ]
    case .device(let device):
      let setup = LVMPoolSetup(
        storage: .device(path: device), volumeGroup: "sandbox-vg", thinPool: "thin-pool",
        runner: runner)
      return [
        Step(
          description: "LVM thin pool sandbox-vg/thin-pool on \(device)", skipReason: notRealRoot,
          isDone: { await setup.plan().allSatisfy(\.done) }, apply: { try await setup.apply() },
          destructive: true)
      ]
    }
  }

  func configFile() -> String {
    var object: [String: Any] = [
      "dataDir": "/var/lib/atelier", "vmm": vmm, "network": network,
      "storage": storage == "file" ? "file" : "lvm",
      "recipesDir": "/usr/local/share/atelier/images",
      "agentPath": "/usr/local/bin/atelier-agent", "defaultImage": image == "none" ? "tiny" : image,
    ]
    if network == "bridge" {
      object["bridgeName"] = "br0"
      object["bridgeIp"] = "172.16.0.1"
      object["bridgeAllowedPorts"] = allowedPorts()
    }
    if !jailer.isEmpty {
      object["firecrackerJailer"] = jailer
      object["jailerUser"] = "atelier"
    }
    if storage != "file" {
      object["lvmVg"] = "sandbox-vg"
      object["lvmPool"] = "thin-pool"
    }
    let data =
      (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]))
      ?? Data()
    return String(decoding: data, as: UTF8.self) + "\n"
  }

  func systemdUnits() -> [(String, String)] {
    var units: [(String, String)] = [
      (
        "atelier-manager.service",
        """
        [Unit]
        Description=Atelier manager (microVM sandboxes)
        After=network-online.target\(network == "bridge" ? " atelier-network.service" : "")\(storage.hasPrefix("loop:") ? " atelier-loop.service" : "")
        Wants=network-online.target

        [Service]
        Environment=ATELIER_CONFIG=/etc/atelier/config.json
        ExecStart=/usr/local/bin/atelier serve
        # VMs are separate processes: they must outlive a manager restart.
        KillMode=process
        Restart=on-failure
        RestartSec=2

        [Install]
        WantedBy=multi-user.target

        """
      )
    ]
    if network == "bridge" {
      units.append(
        (
          "atelier-network.service",
          """
          [Unit]
          Description=Atelier bridge and firewall rules
          Before=atelier-manager.service
          After=network-pre.target

          [Service]
          Type=oneshot
          RemainAfterExit=yes
          Environment=ATELIER_CONFIG=/etc/atelier/config.json
          ExecStart=/usr/local/bin/atelier network setup

          [Install]
          WantedBy=multi-user.target

          """
        ))
    }
    return units
  }

  func loopUnit() -> String {
    """
    [Unit]
    Description=Atelier LVM loop device
    DefaultDependencies=no
    Before=lvm2-activation.service atelier-manager.service

    [Service]
    Type=oneshot
    RemainAfterExit=yes
    ExecStart=/bin/sh -c 'losetup -j /var/lib/atelier/lvm.img | grep -q . || losetup --find /var/lib/atelier/lvm.img; vgchange -ay sandbox-vg'

    [Install]
    WantedBy=local-fs.target

    """
  }
}

/// `atelier network setup|status`: the bridge and its firewall, or the user-mode egress filter
/// (run at boot by the network unit; the manager sets them up at start too).
struct Network: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Set up or show the bridge and firewall rules (bridge), or the egress filter (user).",
    subcommands: [Setup.self, Status.self])

  struct Setup: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Create the bridge and rules, or the user-mode egress filter (idempotent).")
    func run() async throws {
      let config = try loadConfig()
      let runner = SystemCommandRunner()
      switch config.network {
      case .bridge:
        try await BridgeSetup(config: config, runner: runner).apply()
        print("bridge \(config.bridgeName) \(config.bridgeIp)/24 and its rules ready")
      case .user:
        guard let firewall = NetworkChecks.userModeFirewall(config, runner: runner) else {
          throw CLIError(NetworkChecks.userModeUnfiltered(config))
        }
        try await firewall.apply()
        print("user-mode egress filter \(UserModeFirewall.chain) ready")
      }
    }
  }

  struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Show which parts are in place, and the rules of each chain.")
    @Flag(help: "Only the summary, not the rules.") var brief = false
    func run() async throws {
      let config = try loadConfig()
      let runner = SystemCommandRunner()
      let plan: [(description: String, done: Bool)]
      switch config.network {
      case .bridge: plan = await BridgeSetup(config: config, runner: runner).plan()
      case .user:
        guard let firewall = NetworkChecks.userModeFirewall(config, runner: runner) else {
          print("MISS \(NetworkChecks.userModeUnfiltered(config))")
          throw ExitCode(1)
        }
        plan = await firewall.plan()
      }
      for step in plan { print("\(step.done ? "ok  " : "MISS") \(step.description)") }
      if !brief {
        for line in await NetworkChecks.ruleListing(config, runner: runner) { print(line) }
      }
      if plan.contains(where: { !$0.done }) { throw ExitCode(1) }
    }
  }
}
