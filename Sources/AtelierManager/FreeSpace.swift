import AtelierCore
import Foundation

extension SandboxService {
  /// Refuses `operation` (a 429 that names the setting) when the data folder's file system has
  /// less free space than `ATELIER_MIN_FREE_GB`: disks, guest memory files and snapshots all
  /// grow there, and a full file system would break running sandboxes, not just this one.
  func requireFreeSpace(for operation: String) throws {
    guard config.minFreeGb > 0 else { return }
    var info = statvfs()
    guard statvfs(config.dataDir, &info) == 0 else { return }
    let free = Int64(info.f_bavail) * Int64(info.f_frsize)
    guard free < Int64(config.minFreeGb) << 30 else { return }
    throw AtelierError(
      .resourceExhausted,
      "\(operation) is refused: the file system of the data folder \(config.dataDir) has "
        + String(format: "%.1f", Double(free) / Double(1 << 30))
        + " GiB free, below ATELIER_MIN_FREE_GB (\(config.minFreeGb) GiB). Free space there "
        + "(delete sandboxes or snapshots) or lower ATELIER_MIN_FREE_GB")
  }
}
