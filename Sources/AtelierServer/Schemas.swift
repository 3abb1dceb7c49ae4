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
        "image": string, "vcpus": integer, "memoryMb": integer, "hostname": string,
        "createdAt": dateTime, "updatedAt": dateTime, "timings": ref("Timings"), "error": string,
      ],
    ],
    "CreateSandbox": [
      "type": "object",
      "properties": [
        "image": ["type": "string", "default": "tiny"],
        "vcpus": ["type": "integer", "minimum": 1, "maximum": 8, "default": 1],
        "memoryMb": ["type": "integer", "minimum": 128, "maximum": 16384, "default": 256],
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
}
