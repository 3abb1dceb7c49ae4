import AtelierHost
import AtelierProcess
import Foundation
import Testing

/// Why the vhost-vsock suite cannot run here, or nil when it can.
let vhostVsockUnavailable: String? =
  QEMUMicroVM.vhostVsockUsable()
  ? nil : "no usable /dev/vhost-vsock on this host: QEMU guests cannot have a vsock"

extension VMTests {
  /// The agent of a QEMU guest over vhost-vsock instead of a loopback port forward.
  @Suite struct VhostVsockTests {
    @Test(
      .disabled(if: vhostVsockUnavailable != nil, Comment(rawValue: vhostVsockUnavailable ?? "")))
    func agentAnswersOverVhostVsockAcrossASnapshotRestore() async throws {
      try await withManager(environment: ["ATELIER_QEMU_VSOCK": "on"]) { manager in
        let sandbox = try await manager.createSandbox()
        let id = try #require(sandbox["id"] as? String)
        let hostname = try await manager.exec(id, ["command": "hostname"])
        #expect(hostname.json["stdout"] as? String == "sbx-\(id)\n")

        // The VM has a vsock device and no port forward to the agent.
        let commandLines = manager.qemuProcesses().compactMap { pid in
          FileManager.default.contents(atPath: "/proc/\(pid)/cmdline").map {
            String(decoding: $0, as: UTF8.self)
          }
        }
        #expect(commandLines.count == 1)
        #expect(commandLines.allSatisfy { $0.contains("vhost-vsock-device,") })
        #expect(commandLines.allSatisfy { !$0.contains("hostfwd=") })

        // A restore gets a CID of its own, and its agent answers.
        let snapshot = try await manager.request(.POST, "/api/sandboxes/\(id)/snapshots", json: [:])
        #expect(snapshot.status == 201, "\(snapshot.text)")
        let snapshotId = try #require(snapshot.json["id"] as? String)
        let restore = try await manager.request(
          .POST, "/api/sandboxes", json: ["snapshot": snapshotId])
        #expect(restore.status == 201, "\(restore.text)")
        let restoredId = try #require(restore.json["id"] as? String)
        let restored = try await manager.exec(restoredId, ["command": "hostname"])
        #expect(restored.json["stdout"] as? String == "sbx-\(restoredId)\n")
        let cids = manager.qemuProcesses().compactMap { pid -> String? in
          let arguments =
            FileManager.default.contents(atPath: "/proc/\(pid)/cmdline")?.split(separator: 0)
            .map { String(decoding: $0, as: UTF8.self) } ?? []
          return arguments.first { $0.hasPrefix("vhost-vsock-device,") }
        }
        #expect(Set(cids).count == 2)

        for sandboxId in [id, restoredId] {
          #expect(try await manager.request(.DELETE, "/api/sandboxes/\(sandboxId)").status == 204)
        }
        #expect(manager.qemuProcesses().isEmpty)
      }
    }

    @Test(
      .disabled(
        if: vhostVsockUnavailable == nil, "this host has vhost-vsock: nothing to refuse"))
    func insistingOnVsockWithoutVhostVsockFailsAtStart() async throws {
      let data = try TestEnvironment.temporaryDirectory("atl-vsock")
      defer { try? FileManager.default.removeItem(atPath: data) }
      var environment = TestEnvironment.baseEnvironment
      environment["ATELIER_DATA_DIR"] = data
      environment["ATELIER_SERVER_PORT"] = String(try freePort())
      environment["ATELIER_ACCEL"] = "tcg"
      environment["ATELIER_QEMU_VSOCK"] = "on"
      let result = try await TestEnvironment.cli(
        ["serve"], environment: environment, timeout: .seconds(60))
      #expect(result.exitCode != 0)
      #expect(result.stderrText.contains("ATELIER_QEMU_VSOCK"), "\(result.stderrText)")
    }
  }
}
