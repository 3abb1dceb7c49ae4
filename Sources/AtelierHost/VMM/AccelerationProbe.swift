import AtelierCore
import AtelierProcess
import Foundation
import Logging

/// Decides between KVM and TCG. `/dev/kvm` existing proves nothing (on PVM-only hosts a stock
/// kernel hangs under KVM with no output), so KVM is used only after a probe boot of the
/// guest kernel reaches the initramfs under a short timeout. The verdict is cached per
/// kernel and QEMU binary.
public struct AccelerationProbe: Sendable {
  public struct Verdict: Codable, Sendable, Equatable {
    public var acceleration: Acceleration
    public var reason: String
    public var kernel: String
    public var qemuBinary: String
    public var probedAt: Date
  }

  let cachePath: String
  let qemuBinary: String
  let timeout: Duration
  let logger: Logger

  public init(
    cachePath: String, qemuBinary: String, timeout: Duration = .seconds(8),
    logger: Logger = Logger(label: "atelier.vmm.probe")
  ) {
    self.cachePath = cachePath
    self.qemuBinary = qemuBinary
    self.timeout = timeout
    self.logger = logger
  }

  public func resolve(_ setting: Config.Accel, kernel: GuestKernel?) async -> Verdict {
    func verdict(_ acceleration: Acceleration, _ reason: String) -> Verdict {
      Verdict(
        acceleration: acceleration, reason: reason, kernel: kernel?.kernelPath ?? "",
        qemuBinary: qemuBinary, probedAt: Date())
    }
    switch setting {
    case .tcg: return verdict(.tcg, "ATELIER_ACCEL=tcg")
    case .kvm: return verdict(.kvm, "ATELIER_ACCEL=kvm")
    case .auto: break
    }
    // No access is not probed (it cannot hang, nor tell anything): it says how to get access.
    let device = KVMDevice.check()
    guard device == .accessible else { return verdict(.tcg, device.reason) }
    guard let kernel else { return verdict(.tcg, "no guest kernel yet to probe KVM with") }
    if let data = FileManager.default.contents(atPath: cachePath),
      let cached = try? JSONDecoder.atelier.decode(Verdict.self, from: data),
      cached.kernel == kernel.kernelPath, cached.qemuBinary == qemuBinary
    {
      return cached
    }
    let result = await probeKVM(kernel)
    if let data = try? JSONEncoder.atelier.encode(result) {
      try? data.write(to: URL(fileURLWithPath: cachePath))
    }
    return result
  }

  func probeKVM(_ kernel: GuestKernel) async -> Verdict {
    logger.info("probing KVM with a test boot (up to \(timeout))")
    let console = "\(cachePath).console"
    try? FileManager.default.removeItem(atPath: console)
    let arguments = [
      "-machine", "microvm,x-option-roms=off,isa-serial=on,rtc=on", "-accel", "kvm",
      "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none",
      "-no-reboot", "-chardev", "file,id=console,path=\(console)", "-serial", "chardev:console",
      "-kernel", kernel.kernelPath, "-initrd", kernel.initrdPath,
      "-append", "console=ttyS0 quiet panic=-1 atelier.probe=1",
    ]
    let result = try? await ProcessRunner.run(
      SpawnOptions(
        executable: qemuBinary, arguments: arguments,
        environment: ProcessInfo.processInfo.environment),
      timeout: timeout)
    let output = (try? String(contentsOfFile: console, encoding: .utf8)) ?? ""
    try? FileManager.default.removeItem(atPath: console)
    let verdict: (Acceleration, String)
    if output.contains(KernelProvider.probeMarker) {
      verdict = (.kvm, "a probe boot under KVM reached the initramfs")
    } else if result?.timedOut == true {
      verdict = (.tcg, "a probe boot under KVM hung for \(timeout); using TCG")
    } else {
      let reason =
        result.map { $0.stderrText.split(separator: "\n").last.map(String.init) ?? "" } ?? ""
      verdict = (.tcg, "a probe boot under KVM failed (\(reason)); using TCG")
    }
    logger.info("acceleration: \(verdict.0.rawValue) — \(verdict.1)")
    return Verdict(
      acceleration: verdict.0, reason: verdict.1, kernel: kernel.kernelPath,
      qemuBinary: qemuBinary, probedAt: Date())
  }
}
