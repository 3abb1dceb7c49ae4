import AtelierHost
import Foundation
import Testing

/// The uncompressed kernel Firecracker needs, from the same Debian kernel the images use.
@Suite struct KernelTests {
  @Test func vmlinuxIsExtractedFromTheImagesKernel() async throws {
    let shared = try await TestEnvironment.sharedImage.ensure()
    let provider = KernelProvider(
      kernelsDirectory: "\(shared)/kernels", cacheDirectory: "\(shared)/cache",
      runner: SystemCommandRunner())
    let installed = try #require(provider.installed())
    // A copy of the kernel in a folder of its own: the shared folder's vmlinux stays as it is
    // for whoever else uses it.
    let folder = try TestEnvironment.temporaryDirectory("atl-kernel")
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try FileManager.default.copyItem(atPath: installed.kernelPath, toPath: "\(folder)/vmlinuz")
    var kernel = installed
    kernel.kernelPath = "\(folder)/vmlinuz"
    #expect(!FileManager.default.fileExists(atPath: kernel.vmlinuxPath))
    let started = ContinuousClock.now
    let path = try await provider.ensureVmlinux(kernel)
    let elapsed = ContinuousClock.now - started
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    #expect(data.prefix(4) == Data([0x7F, 0x45, 0x4C, 0x46]))  // ELF
    #expect(data[4] == 2)  // 64-bit
    let compressed = try Data(contentsOf: URL(fileURLWithPath: kernel.kernelPath))
    #expect(data.count > compressed.count * 2)
    // A valid ELF: the section header table lies within the file.
    let sectionHeaderOffset = data[0x28..<0x30].reversed().reduce(UInt64(0)) {
      $0 << 8 | UInt64($1)
    }
    #expect(sectionHeaderOffset > 0 && sectionHeaderOffset < UInt64(data.count))
    print("vmlinux: \(data.count >> 20) MiB in \(elapsed)")
  }
}
