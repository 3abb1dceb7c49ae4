import ArgumentParser
import AtelierCore
import AtelierHost
import Foundation

struct Images: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Build and list guest images.", subcommands: [Build.self, List.self])

  struct Build: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Build an image from its recipe (images/<name>/manifest.json).")
    @Argument(help: "Image name, e.g. tiny or dev-base.") var name: String
    @Flag(help: "Rebuild even when the image is up to date.") var force = false

    func run() async throws {
      let config = try loadConfig()
      bootstrapLogging(level: "warning")
      let runner = SystemCommandRunner()
      let builder = ImageBuilder(
        catalog: ImageCatalog(directory: config.imagesDir),
        kernels: KernelProvider(
          kernelsDirectory: config.kernelsDir, cacheDirectory: config.cacheDir, runner: runner),
        recipes: recipeLocations(config), agentPath: resolvedAgentPath(config),
        logsDirectory: config.logsDir, runner: runner)
      let started = ContinuousClock.now
      do {
        let outcome = try await builder.build(name: name, force: force) { line in
          print("==> \(line)")
        }
        let seconds = Double((ContinuousClock.now - started).components.seconds)
        print(
          outcome.rebuilt
            ? "built \(name) in \(Int(seconds)) s (log: \(outcome.logPath))"
            : "\(name) is up to date")
      } catch {
        throw CLIError("\(error)")
      }
    }
  }

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List built images.")
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
      let config = try loadConfig()
      let images = ImageCatalog(directory: config.imagesDir).list().map(\.info)
      if json { return try printJSON(images) }
      if images.isEmpty {
        print("no images; build one with `atelier images build tiny`")
        return
      }
      printTable(
        ["NAME", "KERNEL", "DISK", "BUILT", "DESCRIPTION"],
        images.map {
          [
            $0.name, $0.kernelVersion, "\($0.diskBytes >> 20) MiB", ISO8601.format($0.builtAt),
            $0.description,
          ]
        })
    }
  }
}
