// swift-tools-version: 6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
  name: "Atelier",
  platforms: [.macOS(.v15)],
  products: [
    .executable(name: "atelier", targets: ["atelier"]),
    .executable(name: "atelier-agent", targets: ["atelier-agent"]),
  ],
  dependencies: [
    // No default traits: they pull full Foundation (and ICU, ~30 MB) into the guest agent.
    .package(
      url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1", traits: []),
    .package(
      url: "https://github.com/hummingbird-project/hummingbird-websocket.git", from: "2.8.1"),
    .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
    .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
    .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
    .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    // gzip for envd file transfers (already in the graph through hummingbird-websocket).
    .package(url: "https://github.com/adam-fowler/compress-nio.git", from: "1.5.0"),
  ],
  targets: [
    // Shared by host and guest.
    .target(name: "CAtelierSys"),
    .target(name: "AtelierProcess", dependencies: ["CAtelierSys"], swiftSettings: swiftSettings),
    .target(name: "AtelierAgentAPI", swiftSettings: swiftSettings),
    // Tar streams read without trusting them (the guest agent's extraction, the CLI's cp).
    .target(name: "AtelierTar", swiftSettings: swiftSettings),
    .target(
      name: "AtelierHTTP",
      dependencies: ["AtelierAgentAPI", .product(name: "Hummingbird", package: "hummingbird")],
      swiftSettings: swiftSettings),

    // The in-guest agent and init: a library (testable on the host) and a thin executable.
    .target(
      name: "AtelierAgent",
      dependencies: [
        "AtelierAgentAPI", "AtelierHTTP", "AtelierProcess", "AtelierTar", "CAtelierSys",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ],
      swiftSettings: swiftSettings),
    .executableTarget(
      name: "atelier-agent", dependencies: ["AtelierAgent"], swiftSettings: swiftSettings),

    // Host side.
    .target(
      name: "AtelierCore",
      dependencies: ["AtelierAgentAPI", .product(name: "Logging", package: "swift-log")],
      swiftSettings: swiftSettings),
    .target(
      name: "AtelierStore",
      dependencies: [.product(name: "GRDB", package: "GRDB.swift")],
      swiftSettings: swiftSettings),
    .target(
      name: "AtelierHost",
      dependencies: [
        "AtelierCore", "AtelierAgentAPI", "AtelierProcess", "CAtelierSys",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "NIOPosix", package: "swift-nio"),
      ],
      swiftSettings: swiftSettings),
    .target(
      name: "AtelierManager",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierStore", "AtelierAgentAPI", "AtelierProcess",
      ],
      swiftSettings: swiftSettings),
    // The E2B-compatible API: E2B's control plane and its in-sandbox daemon (envd), mapped onto
    // Atelier's own.
    .target(
      name: "AtelierE2B",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierManager", "AtelierAgentAPI", "AtelierStore",
        "AtelierHTTP",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "CompressNIO", package: "compress-nio"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: swiftSettings),
    .target(
      name: "AtelierServer",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierManager", "AtelierStore", "AtelierHTTP",
        "AtelierAgentAPI", "AtelierE2B",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "Crypto", package: "swift-crypto"),
        .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        .product(name: "NIOCore", package: "swift-nio"),
        .product(name: "NIOHTTP1", package: "swift-nio"),
      ],
      swiftSettings: swiftSettings),
    .executableTarget(
      name: "atelier",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierServer", "AtelierAgentAPI", "AtelierProcess",
        "AtelierTar",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
      ],
      swiftSettings: swiftSettings),

    .testTarget(
      name: "AtelierUnitTests",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierManager", "AtelierStore", "AtelierServer",
        "AtelierAgentAPI", "AtelierProcess", "AtelierHTTP", "AtelierE2B",
        .product(name: "Hummingbird", package: "hummingbird"),
        .product(name: "HummingbirdTesting", package: "hummingbird"),
        .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: swiftSettings),
    // The agent's logic on the host, in seconds, without VMs.
    .testTarget(
      name: "AtelierAgentTests",
      dependencies: [
        "AtelierAgent", "AtelierAgentAPI", "AtelierTar", "AtelierCore", "AtelierHost",
        "AtelierManager", "AtelierProcess",
        .product(name: "HummingbirdTesting", package: "hummingbird"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
      ],
      swiftSettings: swiftSettings),
    .testTarget(
      name: "AtelierIntegrationTests",
      dependencies: [
        "AtelierCore", "AtelierHost", "AtelierAgentAPI", "AtelierProcess",
        .product(name: "AsyncHTTPClient", package: "async-http-client"),
        .product(name: "HummingbirdWSClient", package: "hummingbird-websocket"),
        .product(name: "Crypto", package: "swift-crypto"),
      ],
      swiftSettings: swiftSettings),
  ]
)
