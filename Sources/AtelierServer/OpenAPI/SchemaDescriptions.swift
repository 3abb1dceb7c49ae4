import AtelierAgentAPI
import AtelierCore
import AtelierManager

// What the Codable shapes cannot say, from the constants the validators use.

extension SandboxStatus: SchemaEnumeration {}
extension IdleAction: SchemaEnumeration {}
extension ExpiryAction: SchemaEnumeration {}
extension FileEntry.Kind: SchemaEnumeration {}
extension ServiceDefinition.RestartPolicy: SchemaEnumeration {}
extension ServiceStatus.State: SchemaEnumeration {}
extension ExecStreamFrame.Kind: SchemaEnumeration {}
extension TerminalControlFrame.Kind: SchemaEnumeration {}

extension SandboxInfo: SchemaDescribed {
  static var schemaName: String { "Sandbox" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("id", "pattern", "^[a-z][a-z0-9]{11}$")
    schema.describe("ipAddress", "the guest's address on the host bridge (bridge networking)")
    schema.describe("snapshotId", "the snapshot it was restored from")
  }
}

extension CreateSandboxRequest: SchemaDescribed {
  static var schemaName: String { "CreateSandbox" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.description = "Boot an image, or restore a snapshot (give only snapshot)."
    schema.bound("vcpus", context.limits.vcpus, default: defaultVcpus)
    schema.bound("memoryMb", context.limits.memoryMb, default: defaultMemoryMb)
    schema.bound("diskGb", context.limits.diskGb)
    schema.describe("diskGb", "disk size (default ATELIER_DISK_SIZE_GB; at least the image's)")
    schema.bound("timeoutSeconds", timeoutRange)
    schema.describe("timeoutSeconds", "idle seconds before onIdle; 0 turns it off")
    schema.describe("snapshot", "restore this snapshot instead of booting")
    schema.bound("lifetimeSeconds", lifetimeRange)
    schema.describe("lifetimeSeconds", "seconds until onExpiry, however busy; 0 or none: no end")
    schema.set("env", "maxProperties", .number(Double(SandboxEnvironment.maxVariables)))
    schema.set("env", "propertyNames", ["pattern": .string(SandboxEnvironment.namePattern)])
    schema.set("env", "additionalProperties", ["type": "string", "pattern": "^[^\\u0000]*$"])
    // A restore takes its shape from the snapshot (SandboxService.create refuses both).
    // (null counts as absent, as it decodes as nil.)
    schema.extra["allOf"] = .array(
      ["image", "vcpus", "memoryMb", "diskGb"].map { field in
        [
          "not": [
            "required": ["snapshot", .string(field)],
            "properties": ["snapshot": ["type": "string"], field: ["not": ["type": "null"]]],
          ]
        ]
      })
  }
}

extension UpdateSandboxRequest: SchemaDescribed {
  static var schemaName: String { "UpdateSandbox" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.bound("timeoutSeconds", CreateSandboxRequest.timeoutRange)
    schema.describe("timeoutSeconds", "idle seconds before onIdle; 0 turns it off")
    schema.bound("lifetimeSeconds", CreateSandboxRequest.lifetimeRange)
    schema.describe("lifetimeSeconds", "the lifetime from now; 0 turns it off")
  }
}

extension SnapshotRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.length("name", nameLength)
  }
}

extension ForkRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.bound("count", countRange, default: 1)
  }
}

extension NetworkPolicyRequest: SchemaDescribed {
  static var schemaName: String { "NetworkPolicyRequest" }
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    let entries = context.destinationLists ? NetworkPolicy.maxEntries : 0
    for list in ["allow", "deny"] {
      schema.set(list, "items", ["type": "string", "pattern": .string(IPv4Network.pattern)])
      schema.set(list, "maxItems", .number(Double(entries)))
    }
    if !context.destinationLists {
      schema.description = "allow and deny need bridge networking: here they must be empty."
    }
  }
}

extension ExecRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.description = "Exactly one of command (run by /bin/sh -c) or argv (run directly)."
    // The rules of `validationProblem`.
    schema.extra["oneOf"] = [
      ["required": ["command"], "properties": ["command": ["type": "string"]]],
      ["required": ["argv"], "properties": ["argv": ["type": "array"]]],
    ]
    schema.set("command", "minLength", 1)
    schema.set("argv", "minItems", 1)
    schema.set("argv", "prefixItems", [["type": "string", "minLength": 1]])
    schema.bound("timeoutMs", timeoutRange)
    schema.describe("user", "dev where that user exists, else root")
    schema.set("user", "pattern", .string(GuestFormats.userPattern))
    schema.set("cwd", "pattern", .string(GuestFormats.pathPattern))
  }
}

extension SnapshotInfo: SchemaDescribed { static var schemaName: String { "Snapshot" } }
extension ImageInfo: SchemaDescribed { static var schemaName: String { "Image" } }
extension HealthReport: SchemaDescribed { static var schemaName: String { "Health" } }
extension SpawnTimings: SchemaDescribed { static var schemaName: String { "Timings" } }

extension ExecBatchRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("commands", "minItems", .number(Double(commandCount.lowerBound)))
    schema.set("commands", "maxItems", .number(Double(commandCount.upperBound)))
  }
}

extension MkdirRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("path", "pattern", .string(GuestFormats.pathPattern))
    schema.set("mode", "pattern", .string(GuestFormats.modePattern))
    schema.set("owner", "pattern", .string(GuestFormats.ownerPattern))
  }
}

extension WriteFilesRequest.File.Encoding: SchemaEnumeration {}

extension WriteFilesRequest.File: SchemaDescribed {
  /// What `Data(base64Encoded:)` takes.
  static let base64Pattern = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"

  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    // Base64 content must decode.
    schema.extra["anyOf"] = [
      ["properties": ["encoding": ["enum": ["utf8", .null]]]],
      [
        "required": ["encoding"],
        "properties": [
          "encoding": ["const": "base64"], "content": ["pattern": .string(base64Pattern)],
        ],
      ],
    ]
    schema.set("path", "pattern", .string(GuestFormats.pathPattern))
    schema.set("mode", "pattern", .string(GuestFormats.modePattern))
    schema.set("owner", "pattern", .string(GuestFormats.ownerPattern))
  }
}

extension GitRepoRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("repoPath", "pattern", .string(GuestFormats.pathPattern))
  }
}

extension DevCommandRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("command", "minLength", 1)
    schema.bound("port", GuestFormats.portRange)
    schema.set("workdir", "pattern", .string(GuestFormats.pathPattern))
  }
}

extension ServiceDefinition: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.set("command", "minLength", 1)
    schema.bound("port", GuestFormats.portRange)
    schema.set("cwd", "pattern", .string(GuestFormats.pathPattern))
    schema.set("user", "pattern", .string(GuestFormats.userPattern))
  }
}

extension TerminalCreateRequest: SchemaDescribed {
  static func describe(_ schema: inout ObjectSchema, in context: SchemaContext) {
    schema.bound("cols", GuestFormats.terminalSizeRange)
    schema.bound("rows", GuestFormats.terminalSizeRange)
    schema.set("command", "minItems", 1)
    schema.set("user", "pattern", .string(GuestFormats.userPattern))
    schema.set("cwd", "pattern", .string(GuestFormats.pathPattern))
  }
}
