import AtelierAgentAPI
import AtelierHTTP
import AtelierProcess
import Logging

#if canImport(FoundationEssentials)
  import FoundationEssentials
#else
  import Foundation
#endif
#if canImport(Glibc)
  import Glibc
#endif

/// Keeps long-running processes up: services (declared in the image under
/// /etc/atelier/services/<name>.json, or pushed by the manager) and dev commands. Output goes to
/// <state>/logs/<name>.log; a process that exits unexpectedly is restarted with backoff.
actor ServiceSupervisor {
  enum Kind: String { case service, dev }

  struct Entry {
    var name: String
    var kind: Kind
    var definition: ServiceDefinition
    var state: ServiceStatus.State = .stopped
    var pid: Int32?
    var startedAt: Double?
    var exitCode: Int32?
    var restarts = 0
    var stopRequested = false
    /// Bumped on every start, so a late exit of an older process is ignored.
    var generation = 0
    var process: RunningProcess?
  }

  let logDirectory: String
  /// Definitions and whether each should run, so they come back after a stop/start.
  let definitionsDirectory: String
  let logger: Logger
  private var entries: [String: Entry] = [:]
  static let stopTimeout: Duration = .seconds(5)

  init(stateDirectory: String, logger: Logger) {
    logDirectory = "\(stateDirectory)/logs"
    definitionsDirectory = "\(stateDirectory)/services"
    self.logger = logger
    for directory in [logDirectory, definitionsDirectory] {
      try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }
  }

  struct Persisted: Codable {
    var kind: String
    var definition: ServiceDefinition
    var wanted: Bool
  }

  private func persist(_ name: String) {
    let path = "\(definitionsDirectory)/\(name).json"
    guard let entry = entries[name] else {
      unlink(path)
      return
    }
    let record = Persisted(
      kind: entry.kind.rawValue, definition: entry.definition,
      wanted: !entry.stopRequested && entry.state != .stopped)
    if let data = try? JSONEncoder().encode(record) {
      _ = writeFile(path, String(decoding: data, as: UTF8.self))
    }
  }

  /// Services and dev commands defined through the API before the last shutdown; those that
  /// were running start again.
  func loadPersisted() {
    let files = (try? FileManager.default.contentsOfDirectory(atPath: definitionsDirectory)) ?? []
    for file in files.sorted() where file.hasSuffix(".json") {
      let name = String(file.dropLast(5))
      guard let data = FileManager.default.contents(atPath: "\(definitionsDirectory)/\(file)"),
        let record = try? JSONDecoder().decode(Persisted.self, from: data),
        let kind = Kind(rawValue: record.kind)
      else { continue }
      entries[name] = Entry(name: name, kind: kind, definition: record.definition)
      if record.wanted { try? start(name) }
    }
  }

  static func checkName(_ name: String) throws {
    let allowed = name.allSatisfy {
      ($0.isASCII && ($0.isLowercase || $0.isNumber)) || $0 == "-" || $0 == "_"
    }
    guard !name.isEmpty, name.count <= 40, allowed else {
      throw APIError.badRequest("name must be 1–40 of a-z, 0-9, - and _ (got \(name))")
    }
  }

  /// Services the image declares and no earlier boot persisted; those with `autostart` (the
  /// default) start now.
  func loadDeclared(from directory: String = "/etc/atelier/services") {
    let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    for file in files.sorted() where file.hasSuffix(".json") {
      let name = String(file.dropLast(5))
      guard entries[name] == nil else { continue }
      guard (try? Self.checkName(name)) != nil,
        let data = FileManager.default.contents(atPath: "\(directory)/\(file)"),
        let definition = try? JSONDecoder().decode(ServiceDefinition.self, from: data)
      else {
        logger.warning("ignoring service file \(file): not a valid definition")
        continue
      }
      entries[name] = Entry(name: name, kind: .service, definition: definition)
      if definition.autostart ?? true { try? start(name) }
    }
  }

  // MARK: Definitions

  func define(_ name: String, kind: Kind, definition: ServiceDefinition) throws {
    try Self.checkName(name)
    guard !definition.command.isEmpty else { throw APIError.badRequest("command is empty") }
    if let existing = entries[name], existing.kind != kind {
      throw APIError.conflict("\(name) is a \(existing.kind.rawValue), not a \(kind.rawValue)")
    }
    var entry = entries[name] ?? Entry(name: name, kind: kind, definition: definition)
    entry.definition = definition
    entries[name] = entry
    persist(name)
  }

  func list(kind: Kind) -> [ServiceStatus] {
    let listening = ListeningPorts.current()
    return entries.values.filter { $0.kind == kind }.sorted { $0.name < $1.name }.map {
      status($0, listening: listening)
    }
  }

  func status(of name: String, kind: Kind) throws -> ServiceStatus {
    try status(entry(name, kind: kind), listening: ListeningPorts.current())
  }

  private func entry(_ name: String, kind: Kind) throws -> Entry {
    guard let entry = entries[name], entry.kind == kind else {
      throw APIError.notFound("no \(kind.rawValue) named \(name)")
    }
    return entry
  }

  private func status(_ entry: Entry, listening: Set<Int>) -> ServiceStatus {
    ServiceStatus(
      name: entry.name, kind: entry.kind.rawValue, status: entry.state,
      command: entry.definition.command,
      pid: entry.state == .running ? entry.pid : nil, startedAt: entry.startedAt,
      exitCode: entry.exitCode,
      restarts: entry.restarts, port: entry.definition.port,
      listening: entry.definition.port.map { listening.contains($0) })
  }

  // MARK: Start, stop

  func start(_ name: String) throws {
    guard var entry = entries[name] else { throw APIError.notFound("no service named \(name)") }
    if entry.state == .running || entry.state == .starting { return }
    entry.stopRequested = false
    entries[name] = entry
    try launch(name)
    persist(name)
  }

  private func launch(_ name: String) throws {
    guard var entry = entries[name] else { return }
    let definition = entry.definition
    guard let user = GuestUser.resolve(definition.user) else {
      throw APIError.notFound("unknown user \(definition.user ?? "")")
    }
    let cwd = definition.cwd ?? (directoryExists(user.home) ? user.home : "/")
    guard directoryExists(cwd) else { throw APIError.notFound("cwd \(cwd) does not exist") }
    let log = open(logPath(name), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    guard log >= 0 else { throw APIError.internalError("cannot open the log of \(name)") }
    defer { close(log) }
    let options = SpawnOptions(
      executable: "/bin/sh", arguments: ["-c", definition.command],
      environment: user.environment(extra: definition.env), workingDirectory: cwd,
      credentials: user.uid == getuid() ? nil : user.credentials, stdout: log, stderr: log,
      newSession: true)
    let pid: Int32
    do {
      pid = try ProcessReaper.shared.spawn(options)
    } catch {
      entry.state = .crashed
      entries[name] = entry
      throw APIError.badRequest("cannot start \(name): \(error)")
    }
    entry.generation += 1
    entry.state = .running
    entry.pid = pid
    entry.exitCode = nil
    entry.startedAt = Date().timeIntervalSince1970
    let generation = entry.generation
    entries[name] = entry
    logger.info("started \(entry.kind.rawValue) \(name)", metadata: ["pid": "\(pid)"])
    Task {
      let status = await ProcessReaper.shared.waitForExit(pid)
      await self.exited(name, generation: generation, status: status)
    }
  }

  private func exited(_ name: String, generation: Int, status: ExitStatus) {
    guard var entry = entries[name], entry.generation == generation else { return }
    entry.exitCode = status.code
    entry.pid = nil
    let ranFor = Date().timeIntervalSince1970 - (entry.startedAt ?? 0)
    if entry.stopRequested {
      entry.state = .stopped
      entries[name] = entry
      return
    }
    let policy = entry.definition.restart ?? (entry.kind == .dev ? .never : .onFailure)
    let shouldRestart = policy == .always || (policy == .onFailure && status != .exited(0))
    entry.state = status == .exited(0) && !shouldRestart ? .stopped : .crashed
    entries[name] = entry
    appendToLog(name, "[atelier] \(name) exited with \(status.code)\n")
    guard shouldRestart else { return }
    // Backoff: 1 s, 2 s, 4 s … 30 s; a process that stayed up 30 s starts over at 1 s.
    if ranFor > 30 { entries[name]?.restarts = 0 }
    let attempt = entries[name]?.restarts ?? 0
    let delay = min(30.0, pow(2.0, Double(attempt)))
    entries[name]?.restarts += 1
    Task {
      try? await Task.sleep(for: .seconds(delay))
      await self.restartAfterCrash(name, generation: generation)
    }
  }

  private func restartAfterCrash(_ name: String, generation: Int) {
    guard let entry = entries[name], entry.generation == generation, entry.state == .crashed,
      !entry.stopRequested
    else { return }
    do { try launch(name) } catch { logger.warning("restart of \(name) failed: \(error)") }
  }

  /// TERM to the process group, then KILL after a grace period.
  func stop(_ name: String) async throws {
    guard var entry = entries[name] else { throw APIError.notFound("no service named \(name)") }
    entry.stopRequested = true
    entries[name] = entry
    guard entry.state == .running, let pid = entry.pid else {
      entries[name]?.state = .stopped
      persist(name)
      return
    }
    kill(-pid, SIGTERM)
    let deadline = ContinuousClock.now + Self.stopTimeout
    while entries[name]?.pid == pid && ContinuousClock.now < deadline {
      try? await Task.sleep(for: .milliseconds(50))
    }
    if entries[name]?.pid == pid {
      kill(-pid, SIGKILL)
      while entries[name]?.pid == pid { try? await Task.sleep(for: .milliseconds(20)) }
    }
    entries[name]?.state = .stopped
    persist(name)
  }

  func restart(_ name: String) async throws {
    try await stop(name)
    try start(name)
  }

  func remove(_ name: String, kind: Kind) async throws {
    _ = try entry(name, kind: kind)
    try await stop(name)
    entries[name] = nil
    persist(name)
  }

  // MARK: Logs

  func logPath(_ name: String) -> String { "\(logDirectory)/\(name).log" }

  private func appendToLog(_ name: String, _ text: String) {
    let fd = open(logPath(name), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
  }

  func logs(_ name: String, kind: Kind, offset: Int64, limit: Int) throws -> LogChunk {
    _ = try entry(name, kind: kind)
    let fd = open(logPath(name), O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return LogChunk(content: "", nextOffset: 0) }
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: max(0, min(limit, 4 << 20)))
    let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(offset)) }
    let read = max(0, count)
    return LogChunk(
      content: String(decoding: buffer[0..<read], as: UTF8.self), nextOffset: offset + Int64(read))
  }
}

/// TCP ports something listens on in the guest, from /proc/net/tcp and tcp6.
enum ListeningPorts {
  static func current() -> Set<Int> {
    var ports = Set<Int>()
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
      for line in (readTextFile(file) ?? "").split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 3, fields[3] == "0A",
          let colon = fields[1].lastIndex(of: ":"),
          let port = Int(fields[1][fields[1].index(after: colon)...], radix: 16)
        else { continue }
        ports.insert(port)
      }
    }
    return ports
  }
}
