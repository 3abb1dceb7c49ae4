import ArgumentParser

@main
struct Atelier: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "atelier",
    abstract: "MicroVM sandboxes for development: server, host tool and client in one binary.",
    version: "0.1.0",
    subcommands: [
      Serve.self, Init.self, Network.self, Images.self, SandboxCommand.self, Snapshots.self,
      Events.self, Doctor.self, Bench.self, Token.self, Login.self, Logout.self, Users.self,
      Keys.self,
    ])
}
