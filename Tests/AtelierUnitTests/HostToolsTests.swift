import Foundation
import Testing

@testable import AtelierHost

/// Host programs are found in the sbin folders a normal user's PATH lacks, through the one
/// command runner, and a missing one is named with the Debian package that provides it.
@Suite struct HostToolsTests {
  func scratch() throws -> String {
    let path = "/tmp/atl-unpriv-tools-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  func executable(_ path: String, _ script: String = "#!/bin/sh\necho fake \"$@\"\n") throws {
    try FileManager.default.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data(script.utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o755)
  }

  @Test func aToolOnlyInAnSbinFolderIsFoundWithoutItOnPath() throws {
    let root = try scratch()
    defer { try? FileManager.default.removeItem(atPath: root) }
    try executable("\(root)/sbin/mkfs.fake")
    // Positive control: PATH alone does not have it.
    #expect(HostTools(path: "\(root)/bin:/usr/bin", systemDirectories: []).find("mkfs.fake") == nil)
    let tools = HostTools(path: "\(root)/bin:/usr/bin", systemDirectories: ["\(root)/sbin"])
    #expect(tools.find("mkfs.fake") == "\(root)/sbin/mkfs.fake")
    #expect(tools.directories == ["\(root)/bin", "/usr/bin", "\(root)/sbin"])
    // PATH comes first, and a folder of that name is not a program.
    try executable("\(root)/bin/mkfs.fake")
    #expect(tools.find("mkfs.fake") == "\(root)/bin/mkfs.fake")
    try FileManager.default.createDirectory(
      atPath: "\(root)/bin/folder", withIntermediateDirectories: true)
    #expect(tools.find("folder") == nil)
  }

  @Test func theRealMkfsIsFoundInUsrSbinWithAUsersPath() throws {
    // A normal user's PATH on Debian; mkfs.ext4 (e2fsprogs) lives in /usr/sbin.
    let userPath = "/usr/local/bin:/usr/bin:/bin"
    #expect(HostTools(path: userPath, systemDirectories: []).find("mkfs.ext4") == nil)
    let found = try #require(HostTools(path: userPath).find("mkfs.ext4"))
    #expect(found.hasSuffix("sbin/mkfs.ext4"))
  }

  @Test func theCommandRunnerRunsSbinToolsAndGivesChildrenTheSamePath() async throws {
    let runner = SystemCommandRunner(tools: HostTools(path: "/usr/bin:/bin"))
    let version = try await runner.run(Command("mkfs.ext4", ["-V"]))
    #expect(version.stderr.contains("mke2fs"), "\(version.stderr)")
    let path = try await runner.run(Command("sh", ["-c", "echo $PATH"]))
    #expect(path.stdout.split(separator: ":").contains("/usr/sbin"), "\(path.stdout)")
    // The child itself finds an sbin tool by name, as debootstrap must find chroot.
    let child = try await runner.run(Command("sh", ["-c", "command -v mkfs.ext4"]))
    #expect(child.stdout.contains("sbin/mkfs.ext4"))
  }

  @Test func aMissingToolFailsNamingItsDebianPackage() async throws {
    let empty = try scratch()
    defer { try? FileManager.default.removeItem(atPath: empty) }
    let runner = SystemCommandRunner(tools: HostTools(path: empty, systemDirectories: []))
    let failure = try await #require(throws: CommandFailure.self) {
      try await runner.run("lvcreate", "-V", "1G")
    }
    #expect(failure.exitCode == 127)
    #expect(failure.stderr.contains("lvcreate not found (looked in \(empty))"), "\(failure)")
    #expect(failure.stderr.contains("install the Debian package lvm2"), "\(failure)")
    let missing = MissingTool(name: "mkfs.ext4", searched: ["/usr/bin", "/usr/sbin"])
    #expect(
      missing.description
        == "mkfs.ext4 not found (looked in /usr/bin:/usr/sbin); install the Debian package "
        + "e2fsprogs (apt-get install e2fsprogs)")
    // An unknown tool: no package is made up.
    #expect(MissingTool(name: "frobnicate", searched: ["/x"]).fix == nil)
    #expect(!MissingTool(name: "frobnicate", searched: ["/x"]).description.contains("package"))
  }

  @Test func everyToolAtelierRunsHasAPackage() {
    for tool in [
      "mkfs.ext4", "debugfs", "ip", "bridge", "iptables", "lvcreate", "lvs", "vgcreate", "qemu-img",
      "qemu-system-x86_64", "losetup", "dpkg-deb", "apt-get", "debootstrap", "thin_check",
    ] {
      #expect(HostTools.package(for: tool) != nil, "\(tool)")
    }
    #expect(HostTools.package(for: "/usr/sbin/iptables") == "iptables")
  }
}
