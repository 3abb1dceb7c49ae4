import Foundation
import Testing

@testable import AtelierCore

@Suite struct ConfigTests {
  @Test func defaultsWithoutEnvironment() throws {
    let config = try Config.load(environment: ["HOME": "/home/someone"])
    #expect(config.serverHost == "127.0.0.1")
    #expect(config.serverPort == 4000)
    #expect(config.maxSandboxes == 20)
    #expect(config.accel == .auto)
    #expect(
      config.dataDir == (getuid() == 0 ? "/var/lib/atelier" : "/home/someone/.local/share/atelier"))
  }

  @Test func environmentOverridesFileOverridesDefaults() throws {
    let file = try temporaryFile(
      #"{"server": {"port": 5000, "maxSandboxes": 3}, "accel": "tcg", "dataDir": "/srv/a"}"#)
    let fromFile = try Config.load(environment: ["ATELIER_CONFIG": file])
    #expect(fromFile.serverPort == 5000)
    #expect(fromFile.maxSandboxes == 3)
    #expect(fromFile.accel == .tcg)
    #expect(fromFile.dataDir == "/srv/a")

    let both = try Config.load(environment: [
      "ATELIER_CONFIG": file, "ATELIER_SERVER_PORT": "6000", "ATELIER_DATA_DIR": "/srv/b",
    ])
    #expect(both.serverPort == 6000)
    #expect(both.maxSandboxes == 3)
    #expect(both.dataDir == "/srv/b")
  }

  @Test func theEarlierDiskSizeNameStillWorks() throws {
    #expect(try Config.load(environment: ["ATELIER_LVM_VOLUME_SIZE_GB": "20"]).diskSizeGb == 20)
    #expect(
      try Config.load(environment: [
        "ATELIER_LVM_VOLUME_SIZE_GB": "20", "ATELIER_DISK_SIZE_GB": "30",
      ]).diskSizeGb == 30)
  }

  @Test func inAFileTheCurrentDiskSizeNameWinsToo() throws {
    let file = NSTemporaryDirectory() + "atelier-config-\(UUID().uuidString).json"
    defer { try? FileManager.default.removeItem(atPath: file) }
    try #"{"lvmVolumeSizeGb": 10, "diskSizeGb": 20}"#.write(
      toFile: file, atomically: true, encoding: .utf8)
    #expect(try Config.load(environment: ["ATELIER_CONFIG": file]).diskSizeGb == 20)
  }

  @Test func maxSandboxesHasTheShortEnvironmentNameToo() throws {
    #expect(try Config.load(environment: ["ATELIER_MAX_SANDBOXES": "7"]).maxSandboxes == 7)
    // The name the file path gives wins when both are set.
    #expect(
      try Config.load(environment: [
        "ATELIER_MAX_SANDBOXES": "7", "ATELIER_SERVER_MAX_SANDBOXES": "9",
      ]).maxSandboxes == 9)
  }

  @Test(arguments: [
    ("ATELIER_SERVER_PORT", "abc"), ("ATELIER_SERVER_PORT", "70000"),
    ("ATELIER_MAX_SANDBOXES", "x"), ("ATELIER_ACCEL", "fast"), ("ATELIER_DATA_DIR", "relative"),
    ("ATELIER_MAX_SANDBOXES", "0"),
    ("ATELIER_SERVER_MAX_SANDBOXES", "0"), ("ATELIER_LOG_LEVEL", "loud"),
  ])
  func invalidEnvironmentValueNamesTheKey(key: String, value: String) throws {
    let error = try #require(throws: ConfigError.self) {
      try Config.load(environment: [key: value])
    }
    #expect(error.key == key)
    #expect(error.description.hasPrefix("invalid config \(key):"))
    #expect(!error.description.contains("\n"))
  }

  @Test func invalidFileValueAndUnknownKeyNameTheKey() throws {
    let bad = try temporaryFile(#"{"server": {"port": "many"}}"#)
    let error = try #require(throws: ConfigError.self) {
      try Config.load(environment: ["ATELIER_CONFIG": bad])
    }
    #expect(error.key == "server.port")
    let unknown = try temporaryFile(#"{"server": {"prot": 1}}"#)
    let unknownError = try #require(throws: ConfigError.self) {
      try Config.load(environment: ["ATELIER_CONFIG": unknown])
    }
    #expect(unknownError.key == "server.prot")
    #expect(unknownError.message == "unknown key")
  }

  @Test func missingConfigFileIsAnError() {
    #expect(throws: ConfigError.self) {
      try Config.load(environment: ["ATELIER_CONFIG": "/nonexistent/atelier.json"])
    }
  }

  @Test func environmentNamesFollowThePaths() {
    let names = Set(Config.keys.map(\.envName))
    #expect(names.contains("ATELIER_SERVER_HOST"))
    #expect(names.contains("ATELIER_SERVER_PORT"))
    #expect(names.contains("ATELIER_SERVER_MAX_SANDBOXES"))
    #expect(names.contains("ATELIER_DATA_DIR"))
    #expect(names.contains("ATELIER_ACCEL"))
  }

  func temporaryFile(_ contents: String) throws -> String {
    let path = NSTemporaryDirectory() + "atelier-config-\(UUID().uuidString).json"
    try contents.write(toFile: path, atomically: true, encoding: .utf8)
    return path
  }
}

@Suite struct RecipesDirectoryConfigTests {
  @Test func imagesDirIsTheNameAndRecipesDirStillWorks() throws {
    #expect(try Config.load(environment: ["ATELIER_IMAGES_DIR": "/a"]).recipesDir == "/a")
    #expect(try Config.load(environment: ["ATELIER_RECIPES_DIR": "/b"]).recipesDir == "/b")
    let both = try Config.load(
      environment: ["ATELIER_IMAGES_DIR": "/a", "ATELIER_RECIPES_DIR": "/b"])
    #expect(both.recipesDir == "/a")
    #expect(Config.keys.contains { $0.envName == "ATELIER_IMAGES_DIR" })
  }
}
