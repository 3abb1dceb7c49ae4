import AtelierAgent

/// The in-guest agent and init; all of it is in `AtelierAgent` (unit-tested on the host).
try await AgentMain.run(arguments: CommandLine.arguments)
