import Foundation

/// QEMU's command line.
extension QEMUMicroVM {
  /// The seccomp filter: no obsolete system calls, no setuid and friends, no fork or exec, no
  /// scheduler or resource changes.
  static let sandboxOption =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

  /// TCG translation cache per VM, in MiB. QEMU 7.2's default lets it grow to 1 GiB of host
  /// memory; measured here, a tiny guest's cold boot plus a CPU-bound command fit well in far
  /// less (see the README's benchmark section for the numbers that chose it).
  public static let defaultTranslationCacheMb = 32

  /// The kernel command line: serial console, quiet boot, a panic that ends the VM, and under
  /// TCG the host's TSC rate (without it the guest hangs about half the time calibrating) and
  /// `tsc=reliable`. Under TCG the clocksource watchdog, checking the TSC against jiffies,
  /// sees TCG's scheduling jitter as skew and marks the TSC unstable; the guest then keeps
  /// time with jiffies, which cannot stop the tick, and takes 250 timer interrupts a second
  /// when idle (measured: an idle tiny VM at 7 % of a core, 4 % in its vCPU thread). QEMU's
  /// TSC follows the host's monotonic clock, so it is reliable, and with it an idle guest's
  /// tick stops.
  func kernelCommandLine(_ spec: VMSpec) -> String {
    var arguments = [
      "console=ttyS0", "quiet", "loglevel=3", "panic=-1", "reboot=t", "i8042.noaux",
      "random.trust_cpu=on",
    ]
    if acceleration == .tcg {
      if let khz = HostInfo.tscKHz() { arguments.append("tsc_early_khz=\(khz)") }
      arguments.append("tsc=reliable")
    }
    return (arguments + spec.kernelArguments).joined(separator: " ")
  }

  /// KVM, or TCG with its translation cache sized (0: QEMU's default).
  var accelerator: String {
    if acceleration == .kvm { return "kvm" }
    return translationCacheMb > 0 ? "tcg,tb-size=\(translationCacheMb)" : "tcg"
  }

  /// The command line of a booting VM (its RAM a new file of its own).
  public func arguments(for spec: VMSpec) -> [String] {
    arguments(
      for: spec, memory: .shared(path: Self.memoryFile(spec.runtimeDirectory)), incoming: nil)
  }

  /// The command line for `spec` with `memory` as its RAM; with `incoming`, QEMU waits paused
  /// for a saved state of that format. Descriptors are numbered as `openDevices` opens them.
  func arguments(for spec: VMSpec, memory: GuestMemory, incoming: SavedVMState.Format?)
    -> [String]
  {
    let dir = spec.runtimeDirectory
    var arguments = [
      "-name", "\(Self.processName(spec.sandboxId)),process=\(Self.processName(spec.sandboxId))",
      "-machine", "microvm,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem",
      "-accel", accelerator,
      "-m", "\(spec.memoryMb)", "-smp", "\(spec.vcpus)",
      "-object", memoryBackend(memory, sizeMb: spec.memoryMb, runtimeDirectory: dir),
      "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
      "-chardev", "file,id=console,path=\(ConsoleLog(runtimeDirectory: dir).fifoPath)",
      "-serial", "chardev:console",
      "-kernel", spec.kernelPath, "-initrd", spec.initrdPath,
      "-append", kernelCommandLine(spec),
      "-drive",
      "id=root,file=\(spec.disk.path),format=\(spec.disk.format.rawValue),if=none,cache=writeback,discard=unmap",
      "-device", "virtio-blk-device,drive=root",
      "-device", "virtio-rng-device",
      "-qmp", "unix:\(Self.qmpSocket(dir)),server=on,wait=off",
      "-pidfile", Self.pidFile(dir),
      "-sandbox", Self.sandboxOption,
    ]
    if let keyDrive = spec.agentKeyDrive {
      arguments += [
        "-drive", "id=agentkey,file=\(keyDrive),format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=agentkey",
      ]
    }
    if acceleration == .tcg { arguments += ["-cpu", "max"] }
    if let incoming {
      // Paused until the manager resumes it, whatever run state the saved devices carry.
      arguments += ["-incoming", "defer", "-S"]
      if incoming == .qemuMemoryFileDevices {
        // `xen-save-devices-state` writes no configuration section.
        arguments += ["-global", "migration.send-configuration=off"]
      }
    }
    var descriptor: Int32 = 3
    switch spec.network.backend {
    case .userMode(let forwards):
      let net =
        "net=\(spec.network.gateway.split(separator: ".").prefix(3).joined(separator: ".")).0/\(spec.network.prefixLength)"
      // No IPv6: slirp would map fec0::2 onto the host's ::1, around the IPv4 firewall.
      var netdev =
        "user,id=net0,\(net),host=\(spec.network.gateway),dns=\(spec.network.dns),ipv6=off"
      if spec.network.restricted == true { netdev += ",restrict=on" }
      for forward in forwards {
        netdev +=
          ",hostfwd=tcp:\(forward.hostAddress):\(forward.hostPort)-\(spec.network.guestIPv4):\(forward.guestPort)"
      }
      arguments += ["-netdev", netdev, "-device", "virtio-net-device,netdev=net0"]
    case .tap(_, let mac):
      // The TAP device comes open: QEMU's user may not open /dev/net/tun.
      arguments += [
        "-netdev", "tap,id=net0,fd=\(descriptor)",
        "-device", "virtio-net-device,netdev=net0,mac=\(mac)",
      ]
      descriptor += 1
    }
    if case .vsock(let cid, _) = spec.network.agent {
      arguments += [
        "-device", "vhost-vsock-device,id=vsock0,guest-cid=\(cid),vhostfd=\(descriptor)",
      ]
    }
    if case .privateInterface(let forward, let address, let prefix) = spec.network.agentChannel {
      // restrict=on: the guest cannot reach anything through this NIC; only the forward
      // reaches in.
      let net = address.split(separator: ".").prefix(3).joined(separator: ".")
      arguments += [
        "-netdev",
        "user,id=agent0,restrict=on,net=\(net).0/\(prefix),hostfwd=tcp:\(forward.hostAddress):\(forward.hostPort)-\(address):\(forward.guestPort)",
        "-device", "virtio-net-device,netdev=agent0,mac=52:54:00:a7:e1:01",
      ]
    }
    return arguments
  }

  /// The guest RAM: a booted VM's own file mapped shared (a snapshot copies it); a restore's
  /// private copy-on-write mapping of the snapshot's file, linked into its runtime directory
  /// (the snapshots folder is root's alone). QEMU 7.2 opens a `share=off` file read-write
  /// all the same (`rom=off` for read-only files came in 8.2), so that file must be writable
  /// by the VM user; nothing ever writes it.
  func memoryBackend(_ memory: GuestMemory, sizeMb: Int, runtimeDirectory: String) -> String {
    switch memory {
    case .shared(let path):
      "memory-backend-file,id=mem,size=\(sizeMb)M,mem-path=\(path),share=on"
    case .privateMapping:
      "memory-backend-file,id=mem,size=\(sizeMb)M,mem-path=\(Self.baseMemoryLink(runtimeDirectory)),share=off"
    }
  }
}
