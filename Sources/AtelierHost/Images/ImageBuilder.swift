import AtelierCore
import Crypto
import Foundation
import Logging

/// Builds an image from its recipe into a temporary folder, then publishes it in one rename:
/// a failed build leaves the previous image as it was.
public struct ImageBuilder: Sendable {
  let catalog: ImageCatalog
  let kernels: KernelProvider
  let recipes: RecipeLocations
  let agentPath: String
  let logsDirectory: String
  let runner: any CommandRunning

  public init(
    catalog: ImageCatalog, kernels: KernelProvider, recipes: RecipeLocations, agentPath: String,
    logsDirectory: String, runner: any CommandRunning
  ) {
    self.catalog = catalog
    self.kernels = kernels
    self.recipes = recipes
    self.agentPath = agentPath
    self.logsDirectory = logsDirectory
    self.runner = runner
  }

  public struct Outcome: Sendable {
    public var image: ImageRecord
    public var rebuilt: Bool
    public var logPath: String
  }

  public func build(
    name: String, force: Bool, progress: @escaping @Sendable (String) -> Void
  ) async throws -> Outcome {
    let recipe = try recipes.load(name)
    let buildId = "\(Int(Date().timeIntervalSince1970))-\(Identifier.make(length: 6))"
    try FileManager.default.createDirectory(
      atPath: "\(logsDirectory)/images", withIntermediateDirectories: true)
    let log = BuildLog(path: "\(logsDirectory)/images/\(name)-\(buildId).log", echo: progress)
    let logged = LoggingRunner(inner: runner, log: log)
    log.line("building image \(name) (build \(buildId))")
    do {
      let agent = try AgentBinary.check(agentPath, runner: logged)
      let kernel = try await KernelProvider(
        kernelsDirectory: kernels.kernelsDirectory, cacheDirectory: kernels.cacheDirectory,
        runner: logged
      ).ensure(progress: { log.line($0) })
      let inputs = try inputsHash(recipe: recipe, agent: agent, kernel: kernel)
      if !force, let current = catalog.image(named: name), current.inputsHash == inputs {
        log.line("image \(name) is up to date (build \(current.buildId)); --force rebuilds it")
        return Outcome(image: current, rebuilt: false, logPath: log.path)
      }
      let image = try await buildFresh(
        recipe: recipe, buildId: buildId, kernel: kernel, agent: agent, inputs: inputs,
        runner: logged, log: log)
      log.line("image \(name) ready: \(image.diskPath)")
      return Outcome(image: image, rebuilt: true, logPath: log.path)
    } catch {
      log.line("build failed: \(error)")
      throw ImageError("image \(name) build failed: \(error) (log: \(log.path))")
    }
  }

  func buildFresh(
    recipe: ImageRecipe, buildId: String, kernel: GuestKernel, agent: String, inputs: String,
    runner: any CommandRunning, log: BuildLog
  ) async throws -> ImageRecord {
    let work = "\(catalog.directory)/.build-\(recipe.name)-\(buildId)"
    let staging = "\(work)/root"
    let output = "\(work)/out"
    defer { try? FileManager.default.removeItem(atPath: work) }
    // A staging tree made by debootstrap holds device nodes and root-owned files.
    try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: staging, withIntermediateDirectories: true)

    let root = RootFilesystem(path: staging, runner: runner, log: log)
    switch recipe.base {
    case .busybox:
      try await root.populateBusybox(
        busyboxDeb: try await kernels.download(KernelProvider.busyboxPackage), scratch: work)
    case .debootstrap:
      try await root.debootstrap(recipe: recipe)
    }
    log.line("installing the agent")
    try await root.installAgent(agent)
    if let steps = recipe.steps, !steps.isEmpty, recipe.base == .debootstrap {
      try await root.runSteps(steps)
    }
    try await root.finish(imageName: recipe.name)

    log.line("making the ext4 root disk (\(recipe.diskSizeMb) MiB)")
    let disk = "\(output)/rootfs.ext4"
    try await runner.run(
      Command(
        "mkfs.ext4",
        [
          "-q", "-F", "-L", "atelier-root", "-E", "root_owner=0:0", "-d", staging, disk,
          "\(recipe.diskSizeMb)M",
        ]))
    if getuid() != 0 { try await root.giveToRoot(disk: disk, scratch: work) }
    let finalDirectory = "\(catalog.buildsDirectory(recipe.name))/\(buildId)"
    let record = ImageRecord(
      name: recipe.name, description: recipe.description, buildId: buildId, kernel: kernel,
      diskPath: "\(finalDirectory)/rootfs.ext4",
      diskBytes: Int64(recipe.diskSizeMb) << 20, builtAt: Date(), inputsHash: inputs)
    try JSONEncoder.atelier.encode(record).write(to: URL(fileURLWithPath: "\(output)/image.json"))
    try catalog.publish(record, from: output)
    return record
  }

  func inputsHash(recipe: ImageRecipe, agent: String, kernel: GuestKernel) throws -> String {
    var hasher = SHA256()
    var canonical = recipe
    canonical.folder = nil
    hasher.update(data: try JSONEncoder.atelier.encode(canonical))
    hasher.update(data: Data(kernel.version.utf8))
    hasher.update(data: Data(KernelProvider.initScript(modules: []).utf8))
    let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: agent))
    defer { try? handle.close() }
    while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
      hasher.update(data: chunk)
    }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
  }
}

/// The agent binary that goes into images: it must run in a guest with no Swift runtime.
enum AgentBinary {
  static func check(_ path: String, runner: any CommandRunning) throws -> String {
    guard FileManager.default.isExecutableFile(atPath: path) else {
      throw ImageError(
        "no agent binary at \(path): build it with `swift build -c release --static-swift-stdlib` "
          + "or set ATELIER_AGENT_PATH")
    }
    return path
  }
}

/// Appends to a build log and echoes progress lines.
final class BuildLog: Sendable {
  let path: String
  let echo: @Sendable (String) -> Void

  init(path: String, echo: @escaping @Sendable (String) -> Void) {
    self.path = path
    self.echo = echo
    _ = FileManager.default.createFile(atPath: path, contents: nil)
  }

  func line(_ text: String) {
    echo(text)
    append("[\(ISO8601.format(Date()))] \(text)\n")
  }

  func append(_ text: String) {
    guard let handle = FileHandle(forWritingAtPath: path) else { return }
    defer { try? handle.close() }
    _ = try? handle.seekToEnd()
    try? handle.write(contentsOf: Data(text.utf8))
  }
}

/// Writes each command and its output into the build log.
struct LoggingRunner: CommandRunning {
  let inner: any CommandRunning
  let log: BuildLog

  func run(_ command: Command) async throws -> CommandOutput {
    log.append("$ \(command)\n")
    do {
      let output = try await inner.run(command)
      if !output.stdout.isEmpty { log.append(String(output.stdout.suffix(20000))) }
      if !output.stderr.isEmpty { log.append(String(output.stderr.suffix(20000))) }
      return output
    } catch let failure as CommandFailure {
      log.append(failure.stderr + "\n(exit \(failure.exitCode))\n")
      throw failure
    }
  }
}
