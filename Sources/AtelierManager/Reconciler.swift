/// What the database says about one sandbox, as the reconciler sees it.
public struct RowState: Sendable, Equatable {
  public var id: String
  public var status: String
  public init(id: String, status: String) {
    self.id = id
    self.status = status
  }
}

/// One repair. Decided by `ReconcilePlanner` (pure, unit-tested), carried out by the service.
public enum ReconcileAction: Sendable, Equatable {
  /// The row says running and its VM is alive: take it over.
  case adopt(id: String)
  /// The row says running but its VM is gone.
  case markError(id: String, reason: String)
  /// A create that never finished (the manager died): remove everything it made and the row.
  case abandonCreate(id: String)
  /// A VM no live row owns.
  case killOrphanVM(id: String, pid: Int32)
  case removeOrphanVolume(name: String)
  case removeOrphanRuntimeDirectory(id: String)
}

/// Compares what should exist (rows) with what does (VM processes, volumes, runtime folders).
public enum ReconcilePlanner {
  static let liveStatuses: Set<String> = ["running", "paused", "stopping"]

  public static func plan(
    rows: [RowState], liveVMs: [String: Int32], volumes: [String], runtimeDirectories: [String],
    inFlight: Set<String> = []
  ) -> [ReconcileAction] {
    var actions: [ReconcileAction] = []
    let rowsById = Dictionary(rows.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    for row in rows where !inFlight.contains(row.id) {
      switch row.status {
      case "creating":
        actions.append(.abandonCreate(id: row.id))
      case _ where liveStatuses.contains(row.status):
        if liveVMs[row.id] != nil {
          actions.append(.adopt(id: row.id))
        } else {
          actions.append(.markError(id: row.id, reason: "the VM process is gone"))
        }
      default:
        // stopped or error: nothing should run.
        if let pid = liveVMs[row.id] { actions.append(.killOrphanVM(id: row.id, pid: pid)) }
      }
    }
    for (id, pid) in liveVMs.sorted(by: { $0.key < $1.key })
    where rowsById[id] == nil && !inFlight.contains(id) {
      actions.append(.killOrphanVM(id: id, pid: pid))
    }
    for name in volumes {
      guard let id = VolumeNames.sandboxId(fromVolume: name) else { continue }
      if rowsById[id] == nil && !inFlight.contains(id) {
        actions.append(.removeOrphanVolume(name: name))
      }
    }
    for id in runtimeDirectories where rowsById[id] == nil && !inFlight.contains(id) {
      actions.append(.removeOrphanRuntimeDirectory(id: id))
    }
    return actions
  }
}
