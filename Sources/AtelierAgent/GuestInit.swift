import AtelierAgentAPI
import AtelierProcess
import CAtelierSys
import Logging

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif

#if canImport(Glibc)
  import Glibc
#endif

/// What the agent does when the kernel starts it as PID 1: the few jobs of an init system
/// that a development sandbox needs (file systems, hostname, network).
enum GuestInit {
  static func mountEarlyFileSystems(logger: Logger) {
    let mounts: [(source: String, target: String, type: String, flags: UInt, options: String?)] = [
      ("proc", "/proc", "proc", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
      ("sysfs", "/sys", "sysfs", UInt(MS_NOSUID | MS_NODEV | MS_NOEXEC), nil),
      ("devtmpfs", "/dev", "devtmpfs", UInt(MS_NOSUID), "mode=0755"),
      (
        "devpts", "/dev/pts", "devpts", UInt(MS_NOSUID | MS_NOEXEC), "gid=5,mode=0620,ptmxmode=0666"
      ),
      ("tmpfs", "/dev/shm", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"),
      ("tmpfs", "/tmp", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=1777"),
      ("tmpfs", "/run", "tmpfs", UInt(MS_NOSUID | MS_NODEV), "mode=0755"),
    ]
    // The root disk comes from the initramfs read-write; make sure of it.
    _ = mount("", "/", "", UInt(MS_REMOUNT), nil)
    for entry in mounts {
      mkdir(entry.target, 0o755)
      let result = mount(entry.source, entry.target, entry.type, entry.flags, entry.options)
      if result != 0 && errno != EBUSY {
        logger.warning("mount \(entry.target) failed: \(String(cString: strerror(errno)))")
      }
    }
    if access("/dev/ptmx", F_OK) != 0 { symlink("pts/ptmx", "/dev/ptmx") }
    for (target, link) in [
      ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
      ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"),
    ]
    where access(link, F_OK) != 0 {
      symlink(target, link)
    }
  }

  /// What a distribution's sysctl defaults would set: no following a symlink or hard link
  /// planted in a world-writable folder by another user (the agent runs as root).
  static func hardenKernel(logger: Logger) {
    for setting in ["fs/protected_symlinks", "fs/protected_hardlinks"] {
      if !writeFile("/proc/sys/\(setting)", "1\n") {
        logger.warning("cannot set \(setting): \(String(cString: strerror(errno)))")
      }
    }
  }

  /// The host may hand over a disk larger than the image's file system (a clone grown to the
  /// configured size); the root file system grows online to fill it. Nothing to do is cheap.
  static func growRootFileSystem(logger: Logger) {
    guard let mounts = readTextFile("/proc/mounts"),
      let root = mounts.split(separator: "\n").map({ $0.split(separator: " ") })
        .last(where: { $0.count > 2 && $0[1] == "/" }),
      root[2] == "ext4", root[0].hasPrefix("/dev/")
    else { return }
    let device = String(root[0])
    var before: UInt64 = 0
    var after: UInt64 = 0
    let started = ContinuousClock.now
    guard atelier_grow_filesystem("/", device, &before, &after) == 0 else {
      logger.warning("cannot grow the root file system: \(String(cString: strerror(errno)))")
      return
    }
    if after > before {
      logger.info(
        "root file system grown",
        metadata: [
          "from": "\(before >> 20) MiB", "to": "\(after >> 20) MiB",
          "took": "\(ContinuousClock.now - started)",
        ])
    }
  }

  static func setHostname(_ hostname: String, logger: Logger) {
    if sethostname(hostname, hostname.utf8.count) != 0 {
      logger.warning("sethostname failed: \(String(cString: strerror(errno)))")
    }
    writeFile("/etc/hostname", "\(hostname)\n")
    let hosts = """
      127.0.0.1\tlocalhost
      127.0.1.1\t\(hostname)
      \(GuestServices.guestAddress)\t\(GuestServices.hostName)
      ::1\tlocalhost ip6-localhost ip6-loopback

      """
    writeFile("/etc/hosts", hosts)
  }

  static func configureNetwork(_ parameters: GuestBootParameters, logger: Logger) {
    if atelier_if_set_ipv4("lo", "127.0.0.1", 8) != 0 || atelier_if_up("lo") != 0 {
      logger.warning("loopback setup failed: \(String(cString: strerror(errno)))")
    }
    if let agentInterface = parameters.agentInterface,
      let colon = agentInterface.firstIndex(of: ":")
    {
      // The agent's private channel: address only, no route (nothing beyond it).
      setAddress(
        String(agentInterface[..<colon]),
        String(agentInterface[agentInterface.index(after: colon)...]),
        logger: logger)
    }
    guard let ipv4 = parameters.ipv4, setAddress("eth0", ipv4, logger: logger) else { return }
    if let gateway = parameters.gateway, atelier_route_add_default(gateway) != 0 {
      logger.warning("default route failed: \(String(cString: strerror(errno)))")
    }
    if let dns = parameters.dns {
      writeFile("/etc/resolv.conf", "nameserver \(dns)\n")
    }
  }

  /// `address/prefix` on an interface, which is brought up.
  @discardableResult
  static func setAddress(_ interface: String, _ cidr: String, logger: Logger) -> Bool {
    let parts = cidr.split(separator: "/")
    let prefix = parts.count > 1 ? Int32(parts[1]) ?? 24 : 24
    // A NIC may not be probed yet when init starts (virtio-mmio devices come up while it
    // runs): its name appears within moments, so a missing one is waited for, briefly.
    var attempts = 0
    while true {
      if atelier_if_set_ipv4(interface, String(parts[0]), prefix) == 0,
        atelier_if_up(interface) == 0
      {
        return true
      }
      attempts += 1
      guard errno == ENODEV, attempts < interfaceWaitAttempts else { break }
      usleep(10_000)
    }
    logger.error("\(interface) setup failed: \(String(cString: strerror(errno)))")
    return false
  }

  /// 10 ms apart: five seconds for a NIC to appear.
  static let interfaceWaitAttempts = 500

  /// After a restore or resume: the host's wall clock, fresh entropy, a new identity.
  static func resume(_ request: GuestResumeRequest, identity: AgentIdentity, logger: Logger) {
    let seconds = request.unixTimeNanos / 1_000_000_000
    let nanoseconds = request.unixTimeNanos % 1_000_000_000
    if getpid() == 1 && atelier_set_realtime(seconds, Int(nanoseconds)) != 0 {
      logger.warning("cannot set the clock: \(String(cString: strerror(errno)))")
    }
    if let entropy = request.entropy, let bytes = Data(base64Encoded: entropy), getpid() == 1 {
      let result = [UInt8](bytes).withUnsafeBufferPointer {
        atelier_add_entropy($0.baseAddress, Int32($0.count))
      }
      if result != 0 { logger.warning("cannot add entropy: \(String(cString: strerror(errno)))") }
    }
    // A restore onto a shared network: its own MAC and address, not the original's.
    if getpid() == 1, let mac = request.mac, atelier_if_set_mac("eth0", mac) != 0 {
      logger.warning("cannot set the MAC: \(String(cString: strerror(errno)))")
    }
    if getpid() == 1, let ipv4 = request.ipv4, setAddress("eth0", ipv4, logger: logger),
      let gateway = request.gateway
    {
      _ = atelier_route_add_default(gateway)
    }
    if let sandboxId = request.sandboxId, sandboxId != identity.sandboxId {
      identity.change(sandboxId: sandboxId, hostname: request.hostname)
      if getpid() == 1, let hostname = request.hostname { setHostname(hostname, logger: logger) }
      logger.info("identity changed", metadata: ["sandbox": "\(sandboxId)"])
    }
  }

  /// Flushes file systems and powers the VM off (the VMM process then exits).
  static func powerOff() -> Never {
    _ = atelier_power_off()
    exit(0)
  }
}

@discardableResult
func writeFile(_ path: String, _ contents: String, mode: mode_t = 0o644) -> Bool {
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
  guard fd >= 0 else { return false }
  defer { close(fd) }
  let bytes = Array(contents.utf8)
  return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } == bytes.count
}

/// stat(2) (a free function, so `stat` names the call and not the struct).
func statFile(_ path: String, _ info: inout stat) -> Int32 {
  stat(path, &info)
}

extension String {
  /// Without leading and trailing white space (FoundationEssentials has no CharacterSet).
  var trimmed: String {
    String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
  }
}
