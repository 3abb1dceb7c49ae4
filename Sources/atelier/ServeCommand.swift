import ArgumentParser
import AtelierServer
import Logging

struct Serve: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Run the manager (REST API) in the foreground.")

  func run() async throws {
    let config = try loadConfig()
    bootstrapLogging(level: config.logLevel)
    try await ManagerBootstrap.run(config: config, logger: Logger(label: "atelier.manager"))
  }
}
