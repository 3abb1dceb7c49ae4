import Foundation
import Logging

/// A guest kernel and the initramfs that boots it.
public struct GuestKernel: Codable, Sendable, Equatable {
  public var version: String
  public var kernelPath: String
  public var initrdPath: String

  /// The uncompressed ELF kernel next to `kernelPath` (made by `KernelProvider.ensureVmlinux`).
  public var vmlinuxPath: String {
    (kernelPath as NSString).deletingLastPathComponent + "/vmlinux"
  }
}

/// Fetches Debian's cloud kernel with `apt-get download` (nothing is installed on the host),
/// extracts it, and builds a small initramfs: busybox, the virtio modules, and an `/init`
/// that mounts the root disk and switches to the image's init (the agent).
public struct KernelProvider: Sendable {
  let kernelsDirectory: String
  let cacheDirectory: String
  let runner: any CommandRunning
  let logger: Logger

  public static let kernelPackage = "linux-image-cloud-amd64"
  public static let busyboxPackage = "busybox-static"
  /// Loaded in this order by the initramfs (the .deb ships no modules.dep).
  public static let modules = [
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko", "net/core/failover.ko", "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko", "drivers/char/hw_random/virtio-rng.ko",
    "net/vmw_vsock/vsock.ko", "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
  ]
  public static let probeMarker = "ATELIER_PROBE_OK"

  public init(
    kernelsDirectory: String, cacheDirectory: String, runner: any CommandRunning,
    logger: Logger = Logger(label: "atelier.images.kernel")
  ) {
    self.kernelsDirectory = kernelsDirectory
    self.cacheDirectory = cacheDirectory
    self.runner = runner
    self.logger = logger
  }

  /// The newest kernel already prepared, if any.
  public func installed() -> GuestKernel? {
    let versions = (try? FileManager.default.contentsOfDirectory(atPath: kernelsDirectory)) ?? []
    return versions.sorted().reversed().lazy.compactMap { self.kernel(version: $0) }.first
  }

  func kernel(version: String) -> GuestKernel? {
    let dir = "\(kernelsDirectory)/\(version)"
    let kernel = GuestKernel(
      version: version, kernelPath: "\(dir)/vmlinuz", initrdPath: "\(dir)/initrd.img")
    let exists = [kernel.kernelPath, kernel.initrdPath, "\(dir)/ready"].allSatisfy {
      FileManager.default.fileExists(atPath: $0)
    }
    return exists ? kernel : nil
  }

  /// Downloads and prepares the current Debian cloud kernel unless it is already here.
  public func ensure(progress: @Sendable (String) -> Void) async throws -> GuestKernel {
    try FileManager.default.createDirectory(
      atPath: cacheDirectory, withIntermediateDirectories: true)
    let package = try await resolveKernelPackage()
    let version = String(package.dropFirst("linux-image-".count))
    if let ready = kernel(version: version) {
      progress("kernel \(version) already prepared")
      return ready
    }
    progress("downloading \(package) and \(Self.busyboxPackage)")
    let kernelDeb = try await download(package)
    let busyboxDeb = try await download(Self.busyboxPackage)

    let work = "\(kernelsDirectory)/.prepare-\(version)-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: work) }
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    progress("extracting the kernel")
    try await runner.run("dpkg-deb", "-x", kernelDeb, "\(work)/kernel")
    try await runner.run("dpkg-deb", "-x", busyboxDeb, "\(work)/busybox")

    let output = "\(work)/out"
    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
    try FileManager.default.copyItem(
      atPath: "\(work)/kernel/boot/vmlinuz-\(version)", toPath: "\(output)/vmlinuz")
    progress("building the initramfs")
    let initrd = try makeInitramfs(
      busybox: "\(work)/busybox/bin/busybox",
      modulesRoot: "\(work)/kernel/lib/modules/\(version)/kernel")
    try initrd.write(to: URL(fileURLWithPath: "\(output)/initrd.img"))
    try Data().write(to: URL(fileURLWithPath: "\(output)/ready"))
    let final = "\(kernelsDirectory)/\(version)"
    try? FileManager.default.removeItem(atPath: final)
    try FileManager.default.moveItem(atPath: output, toPath: final)
    guard let ready = kernel(version: version) else {
      throw ImageError("kernel \(version) was prepared but is incomplete")
    }
    return ready
  }

  /// The uncompressed kernel Firecracker needs, extracted once from `vmlinuz`.
  public func ensureVmlinux(_ kernel: GuestKernel) async throws -> String {
    let path = kernel.vmlinuxPath
    if FileManager.default.fileExists(atPath: path) { return path }
    let compressed = try Data(contentsOf: URL(fileURLWithPath: kernel.kernelPath))
    let elf = try await KernelExtractor.extractVmlinux(from: compressed, runner: runner)
    let temporary = "\(path).tmp-\(UUID().uuidString.prefix(8))"
    try elf.write(to: URL(fileURLWithPath: temporary))
    guard rename(temporary, path) == 0 else { throw ImageError("cannot write \(path)") }
    return path
  }

  /// `linux-image-cloud-amd64` is a meta package; the real one is its versioned dependency.
  func resolveKernelPackage() async throws -> String {
    let output = try await runner.run("apt-cache", "depends", "--no-recommends", Self.kernelPackage)
    for line in output.stdout.split(separator: "\n") {
      let words = line.split(separator: " ")
      if words.count == 2, words[0] == "Depends:", words[1].hasPrefix("linux-image-") {
        return String(words[1])
      }
    }
    throw ImageError(
      "cannot find the kernel package behind \(Self.kernelPackage) (is this Debian with apt?)")
  }

  /// `apt-get download` into the cache; reuses a cached .deb when the download fails.
  func download(_ package: String) async throws -> String {
    let result = await runner.probe(
      Command("apt-get", ["download", "-q", package], workingDirectory: cacheDirectory))
    let debs = ((try? FileManager.default.contentsOfDirectory(atPath: cacheDirectory)) ?? [])
      .filter { $0.hasPrefix("\(package)_") && $0.hasSuffix(".deb") }.sorted()
    guard let deb = debs.last else {
      throw ImageError(
        "cannot download \(package): \(result.stderr.trimmingCharacters(in: .whitespacesAndNewlines))"
      )
    }
    return "\(cacheDirectory)/\(deb)"
  }

  func makeInitramfs(busybox: String, modulesRoot: String) throws -> Data {
    var archive = CpioArchive()
    for dir in ["bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"] {
      archive.append(.directory(path: dir))
    }
    archive.append(.characterDevice(path: "dev/console", major: 5, minor: 1))
    archive.append(.characterDevice(path: "dev/null", major: 1, minor: 3, mode: 0o666))
    archive.append(
      .file(
        path: "bin/busybox", contents: try Data(contentsOf: URL(fileURLWithPath: busybox)),
        mode: 0o755))
    archive.append(.symlink(path: "bin/sh", target: "busybox"))
    var names: [String] = []
    for module in Self.modules {
      let path = "\(modulesRoot)/\(module)"
      guard let contents = FileManager.default.contents(atPath: path) else { continue }
      let name = (module as NSString).lastPathComponent
      archive.append(.file(path: "lib/modules/\(name)", contents: contents))
      names.append(String(name.dropLast(3)))
    }
    archive.append(
      .file(path: "init", contents: Data(Self.initScript(modules: names).utf8), mode: 0o755))
    return archive.finished()
  }

  /// The initramfs `/init`. Any failure powers the VM off at once so the manager sees it
  /// exit (with this message at the console's end) instead of waiting for a timeout.
  static func initScript(modules: [String]) -> String {
    """
    #!/bin/busybox sh
    export PATH=/bin
    fail() { echo "atelier-initramfs: $*"; /bin/busybox poweroff -f; }
    /bin/busybox mount -t proc proc /proc
    /bin/busybox mount -t devtmpfs devtmpfs /dev
    cmdline=$(/bin/busybox cat /proc/cmdline)
    # Firecracker describes its devices on the command line; busybox insmod does not read
    # module options from there, so hand them to virtio_mmio.
    mmio=""
    for word in $cmdline; do case "$word" in virtio_mmio.device=*) mmio="$mmio device=${word#virtio_mmio.device=}";; esac; done
    for m in \(modules.joined(separator: " ")); do
      if [ "$m" = virtio_mmio ]; then /bin/busybox insmod /lib/modules/$m.ko $mmio 2>/dev/null
      else /bin/busybox insmod /lib/modules/$m.ko 2>/dev/null; fi
    done
    case " $cmdline " in *" atelier.probe=1 "*) echo "\(probeMarker)"; /bin/busybox poweroff -f;; esac
    root=/dev/vda
    init=/usr/local/bin/atelier-agent
    for word in $cmdline; do
      case "$word" in
        atelier.root=*) root="${word#atelier.root=}";;
        atelier.init=*) init="${word#atelier.init=}";;
      esac
    done
    i=0
    while [ ! -b "$root" ]; do
      i=$((i+1)); [ $i -gt 200 ] && fail "no root disk $root"
      /bin/busybox usleep 25000
    done
    /bin/busybox mount -t ext4 -o rw,noatime "$root" /newroot || fail "cannot mount $root"
    [ -x "/newroot$init" ] || fail "no init $init on the root disk"
    /bin/busybox mount --move /dev /newroot/dev
    /bin/busybox umount /proc
    exec /bin/busybox switch_root /newroot "$init"
    fail "switch_root failed"

    """
  }
}

public struct ImageError: Error, CustomStringConvertible, Sendable {
  public var message: String
  public init(_ message: String) { self.message = message }
  public var description: String { message }
}
