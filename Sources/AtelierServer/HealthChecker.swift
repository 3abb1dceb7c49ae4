import AtelierCore
import AtelierHost
import AtelierManager
import Foundation

/// `GET /health`: whether this manager can create sandboxes, and why not.
struct HealthChecker: Sendable {
  let config: Config
  let drivers: HostDrivers
  let qemuPath: String?

  func images() -> [ImageInfo] {
    drivers.images.list().map(\.info)
  }

  func report() -> HealthReport {
    var checks: [String: HealthReport.Check] = [:]
    checks["vmm"] = .init(
      ok: qemuPath != nil,
      detail: qemuPath.map { "\(drivers.vmm.name) (\($0))" }
        ?? "\(config.qemuBinary) not found; install qemu-system-x86")
    let accel = drivers.acceleration
    checks["accel"] = .init(ok: true, detail: "\(accel.acceleration.rawValue): \(accel.reason)")
    checks["storage"] = storageCheck()
    let images = drivers.images.list()
    checks["images"] = .init(
      ok: !images.isEmpty,
      detail: images.isEmpty
        ? "no image built; run `atelier images build tiny`"
        : images.map(\.name).joined(separator: ", "))
    let ok = checks.values.allSatisfy(\.ok)
    return HealthReport(
      status: ok ? "ok" : "degraded", version: AtelierVersion.current, checks: checks)
  }

  func storageCheck() -> HealthReport.Check {
    guard access(config.dataDir, W_OK) == 0 else {
      return .init(ok: false, detail: "\(config.dataDir) is not writable")
    }
    var stats = statvfs()
    guard statvfs(config.dataDir, &stats) == 0 else {
      return .init(ok: false, detail: "cannot stat \(config.dataDir)")
    }
    let free = UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
    let freeGiB = Double(free) / Double(1 << 30)
    return .init(
      ok: free > 1 << 30,
      detail: "\(drivers.volumes.name) volumes in \(config.dataDir), "
        + String(format: "%.1f GiB free", freeGiB))
  }
}
