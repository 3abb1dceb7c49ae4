import Foundation

// Request and answer bodies of Firecracker's API, written from its swagger
// (firecracker-microvm/firecracker, src/firecracker/swagger/firecracker.yaml): the fields
// Atelier sends or reads, under the swagger's names. Optional fields are left out when nil.

/// `BootSource`, for `PUT /boot-source`.
public struct FirecrackerBootSource: Codable, Sendable, Equatable {
  public var kernelImagePath: String
  public var initrdPath: String?
  public var bootArgs: String
  enum CodingKeys: String, CodingKey {
    case kernelImagePath = "kernel_image_path"
    case initrdPath = "initrd_path"
    case bootArgs = "boot_args"
  }
}

/// `Drive` (a virtio-block drive), for `PUT /drives/{drive_id}`.
public struct FirecrackerDrive: Codable, Sendable, Equatable {
  public var driveId: String
  public var pathOnHost: String
  public var isRootDevice: Bool
  public var isReadOnly: Bool
  enum CodingKeys: String, CodingKey {
    case driveId = "drive_id"
    case pathOnHost = "path_on_host"
    case isRootDevice = "is_root_device"
    case isReadOnly = "is_read_only"
  }
}

/// `NetworkInterface`, for `PUT /network-interfaces/{iface_id}`.
public struct FirecrackerNetworkInterface: Codable, Sendable, Equatable {
  public var ifaceId: String
  public var hostDevName: String
  public var guestMac: String?
  enum CodingKeys: String, CodingKey {
    case ifaceId = "iface_id"
    case hostDevName = "host_dev_name"
    case guestMac = "guest_mac"
  }
}

/// `MachineConfiguration` (its required fields), for `PUT /machine-config`.
public struct FirecrackerMachineConfig: Codable, Sendable, Equatable {
  public var vcpuCount: Int
  public var memSizeMib: Int
  enum CodingKeys: String, CodingKey {
    case vcpuCount = "vcpu_count"
    case memSizeMib = "mem_size_mib"
  }
}

/// `Vsock`, for `PUT /vsock`: the host side is a Unix socket (`uds_path`).
public struct FirecrackerVsock: Codable, Sendable, Equatable {
  public var guestCid: Int
  public var udsPath: String
  enum CodingKeys: String, CodingKey {
    case guestCid = "guest_cid"
    case udsPath = "uds_path"
  }
}

/// `InstanceActionInfo`, for `PUT /actions`.
public struct FirecrackerAction: Codable, Sendable, Equatable {
  public enum ActionType: String, Codable, Sendable {
    case instanceStart = "InstanceStart"
    case sendCtrlAltDel = "SendCtrlAltDel"
    case flushMetrics = "FlushMetrics"
  }
  public var actionType: ActionType
  enum CodingKeys: String, CodingKey { case actionType = "action_type" }
}

/// `Vm`, for `PATCH /vm`.
public struct FirecrackerVMState: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable {
    case paused = "Paused"
    case resumed = "Resumed"
  }
  public var state: State
}

/// `SnapshotCreateParams`, for `PUT /snapshot/create` (the VM must be paused).
public struct FirecrackerSnapshotCreate: Codable, Sendable, Equatable {
  public enum SnapshotType: String, Codable, Sendable {
    case full = "Full"
    case diff = "Diff"
  }
  public var snapshotType: SnapshotType
  public var snapshotPath: String
  public var memFilePath: String
  enum CodingKeys: String, CodingKey {
    case snapshotType = "snapshot_type"
    case snapshotPath = "snapshot_path"
    case memFilePath = "mem_file_path"
  }
}

/// `SnapshotLoadParams`, for `PUT /snapshot/load`: only a fresh Firecracker process accepts
/// it. With a `File` backend the memory file is mapped privately (pages load on first touch).
public struct FirecrackerSnapshotLoad: Codable, Sendable, Equatable {
  public struct MemoryBackend: Codable, Sendable, Equatable {
    public enum BackendType: String, Codable, Sendable {
      case file = "File"
      case uffd = "Uffd"
    }
    public var backendPath: String
    public var backendType: BackendType
    enum CodingKeys: String, CodingKey {
      case backendPath = "backend_path"
      case backendType = "backend_type"
    }
  }
  /// Another TAP device for an interface of the snapshotted VM (Firecracker 1.12+).
  public struct NetworkOverride: Codable, Sendable, Equatable {
    public var ifaceId: String
    public var hostDevName: String
    enum CodingKeys: String, CodingKey {
      case ifaceId = "iface_id"
      case hostDevName = "host_dev_name"
    }
  }
  /// Another vsock socket path (Firecracker 1.16+; older versions reject the unknown field).
  public struct VsockOverride: Codable, Sendable, Equatable {
    public var udsPath: String
    enum CodingKeys: String, CodingKey { case udsPath = "uds_path" }
  }
  public var snapshotPath: String
  public var memBackend: MemoryBackend
  public var resumeVm: Bool
  public var networkOverrides: [NetworkOverride]
  public var vsockOverride: VsockOverride?
  enum CodingKeys: String, CodingKey {
    case snapshotPath = "snapshot_path"
    case memBackend = "mem_backend"
    case resumeVm = "resume_vm"
    case networkOverrides = "network_overrides"
    case vsockOverride = "vsock_override"
  }
}

/// `Error`: the body of every error answer.
public struct FirecrackerFault: Codable, Sendable, Equatable {
  public var faultMessage: String
  enum CodingKeys: String, CodingKey { case faultMessage = "fault_message" }
}

/// `FirecrackerVersion`, from `GET /version`.
public struct FirecrackerVersion: Codable, Sendable, Equatable {
  public var firecrackerVersion: String
  enum CodingKeys: String, CodingKey { case firecrackerVersion = "firecracker_version" }
}

/// `InstanceInfo`, from `GET /`.
public struct FirecrackerInstanceInfo: Codable, Sendable, Equatable {
  public enum State: String, Codable, Sendable {
    case notStarted = "Not started"
    case running = "Running"
    case paused = "Paused"
  }
  public var appName: String
  public var id: String
  public var state: State
  public var vmmVersion: String
  enum CodingKeys: String, CodingKey {
    case appName = "app_name"
    case id
    case state
    case vmmVersion = "vmm_version"
  }
}
