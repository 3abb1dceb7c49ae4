import Foundation
import Testing

@testable import AtelierHost

/// The parts of `atelier doctor` that are not the CLI's: lists in words, packages for tools,
/// and what to do about /dev/kvm without access.
@Suite struct DoctorPartsTests {
  @Test func packagesOfMissingToolsOnceEach() {
    #expect(Prose.packages(for: ["mkfs.ext4", "debugfs", "ip"]) == ["e2fsprogs", "iproute2"])
    #expect(Prose.packages(for: ["frobnicate"]).isEmpty)
  }

  @Test func proseNeverPrintsAnEmptyList() {
    #expect(Prose.list([], empty: "none") == "none")
    #expect(Prose.list(["a"], empty: "") == "a")
    #expect(Prose.list(["a", "b"], empty: "") == "a and b")
    #expect(Prose.list(["a", "b", "c"], empty: "") == "a, b and c")
  }

  @Test func kvmWithoutAccessSaysHowToGetIt() throws {
    #expect(KVMDevice.check(path: "/nonexistent/kvm") == .missing)
    let groupFix = KVMDevice.fix(groupCanUse: true, group: "kvm", user: "alice")
    #expect(groupFix.contains("usermod -aG kvm alice"), "\(groupFix)")
    let rootOnly = KVMDevice.fix(groupCanUse: false, group: "root", user: "alice")
    #expect(rootOnly.contains("chmod 660 /dev/kvm") && rootOnly.contains("usermod -aG kvm alice"))
    let reason = KVMDevice.noAccess(permissions: "crw------- root:root", fix: rootOnly).reason
    #expect(reason.hasPrefix("no access to /dev/kvm (crw------- root:root); fix: "))
    #expect(KVMDevice.modeText(S_IFCHR | 0o660) == "crw-rw----")
  }
}
