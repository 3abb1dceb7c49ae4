/// JSON Schemas of the API's bodies (OpenAPI components).
enum Schemas {
  static func ref(_ name: String) -> JSONValue { OpenAPIDocument.ref(name) }
  static let string: JSONValue = ["type": "string"]
  static let integer: JSONValue = ["type": "integer"]
  static let dateTime: JSONValue = ["type": "string", "format": "date-time"]

  static let all: [String: JSONValue] = [
    "Error": [
      "type": "object", "required": ["error", "message"],
      "properties": [
        "error": [
          "type": "string",
          "enum": [
            "NOT_FOUND", "VALIDATION_ERROR", "CONFLICT", "SANDBOX_NOT_RUNNING",
            "RESOURCE_EXHAUSTED", "UNAUTHORIZED", "FORBIDDEN", "BOOT_FAILED", "UNAVAILABLE",
            "INTERNAL_ERROR",
          ],
        ],
        "message": string,
      ],
    ],
    "Health": [
      "type": "object", "required": ["status", "version", "checks"],
      "properties": [
        "status": ["type": "string", "enum": ["ok", "degraded"]],
        "version": string,
        "checks": [
          "type": "object",
          "additionalProperties": [
            "type": "object", "required": ["ok", "detail"],
            "properties": ["ok": ["type": "boolean"], "detail": string],
          ],
        ],
      ],
    ],
    "Image": [
      "type": "object",
      "required": ["name", "description", "kernelVersion", "diskBytes", "builtAt"],
      "properties": [
        "name": string, "description": string, "kernelVersion": string, "diskBytes": integer,
        "builtAt": dateTime,
      ],
    ],
    "Timings": [
      "type": "object", "required": ["cloneMs", "bootMs", "agentMs", "totalMs"],
      "properties": [
        "cloneMs": integer, "bootMs": integer, "agentMs": integer, "totalMs": integer,
      ],
    ],
    "Sandbox": [
      "type": "object",
      "required": [
        "id", "status", "image", "vcpus", "memoryMb", "hostname", "createdAt", "updatedAt",
      ],
      "properties": [
        "id": ["type": "string", "pattern": "^[a-z][a-z0-9]{11}$"],
        "status": [
          "type": "string",
          "enum": ["creating", "running", "paused", "stopping", "stopped", "error"],
        ],
        "image": string, "vcpus": integer, "memoryMb": integer, "diskGb": integer,
        "hostname": string,
        "createdAt": dateTime, "updatedAt": dateTime, "timings": ref("Timings"), "error": string,
        "timeoutSeconds": integer, "onIdle": ["type": "string", "enum": ["pause", "stop"]],
        "snapshotId": string, "ipAddress": ["type": "string", "description": "on the host bridge"],
      ],
    ],
    "CreateSandbox": [
      "type": "object",
      "description": "Boot an image, or restore a snapshot (give only snapshot).",
      "properties": [
        "image": ["type": "string", "default": "tiny"],
        "vcpus": ["type": "integer", "minimum": 1, "maximum": 8, "default": 1],
        "memoryMb": ["type": "integer", "minimum": 128, "maximum": 16384, "default": 256],
        "snapshot": ["type": "string", "description": "restore this snapshot instead of booting"],
        "diskGb": [
          "type": "integer", "minimum": 1, "maximum": 16384,
          "description": "disk size (default ATELIER_DISK_SIZE_GB; at least the image's)",
        ],
        "timeoutSeconds": ["type": "integer", "minimum": 0],
        "onIdle": ["type": "string", "enum": ["pause", "stop"]],
      ],
    ],
    "ExecRequest": [
      "type": "object",
      "description": "Exactly one of command (run by /bin/sh -c) or argv (run directly).",
      "properties": [
        "command": string, "argv": ["type": "array", "items": string],
        "env": ["type": "object", "additionalProperties": string], "cwd": string,
        "timeoutMs": ["type": "integer", "minimum": 1, "maximum": 86_400_000],
        "user": string, "stdin": string,
      ],
    ],
    "ExecResult": [
      "type": "object",
      "required": ["exitCode", "stdout", "stderr", "durationMs", "truncated", "timedOut"],
      "properties": [
        "exitCode": integer, "stdout": string, "stderr": string, "durationMs": integer,
        "truncated": ["type": "boolean"], "timedOut": ["type": "boolean"],
      ],
    ],
  ]

  static let stringMap: JSONValue = ["type": "object", "additionalProperties": ["type": "string"]]
  static let number: JSONValue = ["type": "number"]
  static let boolean: JSONValue = ["type": "boolean"]

  static func object(_ properties: [String: JSONValue], required: [String] = []) -> JSONValue {
    [
      "type": "object", "properties": .object(properties),
      "required": .array(required.map { .string($0) }),
    ]
  }

  /// Bodies of the agent routes the manager proxies, and of lifecycle routes.
  static let agent: [String: JSONValue] = [
    "UpdateSandbox": object([
      "timeoutSeconds": [
        "type": "integer", "minimum": 0,
        "description": "idle seconds before onIdle; 0 turns it off",
      ],
      "onIdle": ["type": "string", "enum": ["pause", "stop"]],
    ]),
    "SnapshotRequest": object(["name": string]),
    "Snapshot": object(
      [
        "id": string, "sandboxId": string, "name": string, "image": string, "vcpus": integer,
        "memoryMb": integer, "createdAt": dateTime, "sizeBytes": integer,
      ], required: ["id", "sandboxId", "name", "createdAt", "sizeBytes"]),
    "ForkRequest": object(["count": ["type": "integer", "minimum": 1, "maximum": 16, "default": 1]]
    ),
    "CleanupReport": object(
      [
        "adopted": ["type": "array", "items": string],
        "markedError": ["type": "array", "items": string],
        "abandonedCreates": ["type": "array", "items": string],
        "finishedStops": ["type": "array", "items": string],
        "killedProcesses": ["type": "array", "items": integer],
        "removedVolumes": ["type": "array", "items": string],
        "removedDirectories": ["type": "array", "items": string],
        "removedSnapshotFiles": ["type": "array", "items": string],
      ]),
    "SystemStats": object(
      [
        "host": object([
          "cpuCount": integer, "cpuUsagePercent": number,
          "load": ["type": "array", "items": number],
          "memoryTotalBytes": integer, "memoryAvailableBytes": integer, "diskTotalBytes": integer,
          "diskFreeBytes": integer,
        ]),
        "sandboxes": object([
          "byStatus": ["type": "object", "additionalProperties": integer], "total": integer,
          "counted": integer, "limit": integer,
        ]),
        "snapshots": integer, "acceleration": string,
        "storage": object([
          "kind": string, "poolDataPercent": number, "poolMetadataPercent": number,
        ]),
      ], required: ["host", "sandboxes"]),
    "ExecBatchRequest": object(
      ["commands": ["type": "array", "items": ref("ExecRequest")], "stopOnError": boolean],
      required: ["commands"]),
    "ExecBatchResult": object(
      ["results": ["type": "array", "items": ref("ExecResult")], "ok": boolean],
      required: ["results", "ok"]),
    "FileEntry": object(
      [
        "name": string, "path": string,
        "type": ["type": "string", "enum": ["file", "directory", "symlink", "other"]],
        "size": integer,
        "mode": string, "owner": string, "group": string, "modifiedAt": number,
        "linkTarget": string,
      ], required: ["name", "path", "type", "size", "mode", "owner", "group", "modifiedAt"]),
    "FileListing": object(
      ["path": string, "entries": ["type": "array", "items": ref("FileEntry")]],
      required: ["path", "entries"]),
    "MkdirRequest": object(["path": string, "mode": string, "owner": string], required: ["path"]),
    "WriteFilesRequest": object(
      [
        "files": [
          "type": "array",
          "items": object(
            [
              "path": string, "content": string,
              "encoding": ["type": "string", "enum": ["utf8", "base64"]],
              "mode": string, "owner": string,
            ], required: ["path", "content"]),
        ]
      ], required: ["files"]),
    "ServiceDefinition": object(
      [
        "command": string, "cwd": string, "env": stringMap, "user": string,
        "restart": ["type": "string", "enum": ["always", "on-failure", "never"]], "port": integer,
        "autostart": boolean,
      ], required: ["command"]),
    "ServiceStatus": object(
      [
        "name": string, "kind": ["type": "string", "enum": ["service", "dev"]],
        "status": ["type": "string", "enum": ["running", "stopped", "crashed", "starting"]],
        "command": string, "pid": integer, "startedAt": number, "exitCode": integer,
        "restarts": integer,
        "port": integer, "listening": boolean,
      ], required: ["name", "kind", "status", "command", "restarts"]),
    "DevCommandRequest": object(
      ["command": string, "port": integer, "workdir": string, "env": stringMap],
      required: ["command"]),
    "LogChunk": object(
      ["content": string, "nextOffset": integer], required: ["content", "nextOffset"]),
    "GitStatus": object(
      [
        "repos": [
          "type": "array",
          "items": object(
            [
              "path": string, "branch": string, "dirty": boolean, "ahead": integer,
              "behind": integer,
              "changedFiles": ["type": "array", "items": string],
              "lastCommit": object([
                "hash": string, "message": string, "author": string, "date": number,
              ]),
            ], required: ["path", "dirty", "ahead", "behind", "changedFiles"]),
        ]
      ], required: ["repos"]),
    "GitDiff": object(
      [
        "repos": [
          "type": "array",
          "items": object(
            [
              "path": string, "patch": string,
              "files": [
                "type": "array",
                "items": object(
                  ["path": string, "added": integer, "removed": integer],
                  required: ["path", "added", "removed"]),
              ],
            ], required: ["path", "files", "patch"]),
        ]
      ], required: ["repos"]),
    "GitRepoRequest": object(["repoPath": string, "message": string], required: ["repoPath"]),
    "GitCommandResult": object(
      ["ok": boolean, "commit": string, "output": string], required: ["ok", "output"]),
    "Metrics": object(
      [
        "cpu": object(["count": integer, "usagePercent": number]),
        "memory": object(["totalBytes": integer, "usedBytes": integer, "availableBytes": integer]),
        "disk": object([
          "path": string, "totalBytes": integer, "usedBytes": integer, "freeBytes": integer,
        ]),
        "load": ["type": "array", "items": number], "uptimeSeconds": number,
        "processCount": integer,
        "agentRssBytes": integer,
      ], required: ["cpu", "memory", "disk", "load", "uptimeSeconds", "processCount"]),
    "TerminalCreateRequest": object(
      [
        "command": ["type": "array", "items": string], "user": string, "cwd": string,
        "cols": integer,
        "rows": integer, "title": string,
      ]),
    "TerminalSession": object(
      [
        "id": string, "title": string, "command": ["type": "array", "items": string],
        "user": string,
        "pid": integer, "cols": integer, "rows": integer, "createdAt": number, "clients": integer,
      ],
      required: ["id", "title", "command", "user", "pid", "cols", "rows", "createdAt", "clients"]),
  ]
}
