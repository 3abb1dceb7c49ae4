import Foundation
import Testing

@testable import AtelierHost

/// Image recipes are found wherever `atelier` runs from: its checkout (through the
/// `.build/release` symlink or the real build folder), an installed prefix, a symlink to either,
/// the home share folder, or ATELIER_IMAGES_DIR; a miss lists every place looked in.
@Suite struct RecipeLocationsTests {
  let root: String
  let fileManager = FileManager.default

  init() throws {
    root = "/tmp/atl-unpriv-recipes-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
  }

  func recipe(_ folder: String, _ name: String = "tiny") throws {
    try fileManager.createDirectory(
      atPath: "\(folder)/\(name)", withIntermediateDirectories: true)
    let manifest =
      #"{"name": "\#(name)", "description": "test", "base": "busybox", "diskSizeMb": 64}"#
    try Data(manifest.utf8).write(to: URL(fileURLWithPath: "\(folder)/\(name)/manifest.json"))
  }

  func binary(_ path: String) throws {
    try fileManager.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try Data("#!/bin/sh\n".utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o755)
  }

  func link(_ path: String, to target: String) throws {
    try fileManager.createDirectory(
      atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try fileManager.createSymbolicLink(atPath: path, withDestinationPath: target)
  }

  func locations(invoked: String, real: String?, path: String? = nil, home: String? = nil)
    -> RecipeLocations
  {
    RecipeLocations.resolve(
      explicit: "",
      executables: ExecutablePaths.chain(
        invoked: invoked, real: real, currentDirectory: root, path: path),
      home: home)
  }

  /// A checkout built by SwiftPM: `.build/release` is a symlink to the real build folder.
  func checkout() throws -> (checkout: String, realBinary: String) {
    let checkout = "\(root)/checkout"
    try recipe("\(checkout)/images")
    try binary("\(checkout)/.build/x86_64-unknown-linux-gnu/release/atelier")
    try link("\(checkout)/.build/release", to: "x86_64-unknown-linux-gnu/release")
    return (checkout, "\(checkout)/.build/x86_64-unknown-linux-gnu/release/atelier")
  }

  @Test func fromTheCheckoutThroughTheReleaseSymlinkAndItsRealPath() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    let (checkout, real) = try checkout()
    // What the issue saw: the real path's ../../images is .build/images, not the recipes.
    #expect(!fileManager.fileExists(atPath: "\(checkout)/.build/images"))
    for found in [
      locations(invoked: "\(checkout)/.build/release/atelier", real: real),
      locations(invoked: "checkout/.build/release/atelier", real: real),
      locations(invoked: "", real: real),
    ] {
      let tiny = try found.load("tiny")
      #expect(tiny.folder == "\(checkout)/images/tiny", "\(found.directories)")
    }
  }

  @Test func throughASymlinkToTheCheckoutsBinaryFoundByPath() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    let (checkout, real) = try checkout()
    try link("\(root)/home/bin/atelier", to: "\(checkout)/.build/release/atelier")
    let paths = ExecutablePaths.chain(
      invoked: "atelier", real: real, currentDirectory: "/", path: "/nonexistent:\(root)/home/bin")
    #expect(
      paths == ["\(root)/home/bin/atelier", "\(checkout)/.build/release/atelier", real])
    let found = RecipeLocations.resolve(explicit: "", executables: paths, home: nil)
    #expect(try found.load("tiny").folder == "\(checkout)/images/tiny")
  }

  @Test func fromAnInstalledPrefixAndASymlinkEitherWay() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    // The recipes next to the real binary's prefix, run through a link elsewhere.
    try binary("\(root)/usr/local/bin/atelier")
    try recipe("\(root)/usr/local/share/atelier/images")
    try link("\(root)/links/atelier", to: "\(root)/usr/local/bin/atelier")
    let throughLink = locations(
      invoked: "\(root)/links/atelier", real: "\(root)/usr/local/bin/atelier")
    #expect(
      try throughLink.load("tiny").folder == "\(root)/usr/local/share/atelier/images/tiny")
    // The recipes next to the link's prefix, the real binary somewhere without any.
    try binary("\(root)/opt/atelier-1/atelier")
    try link("\(root)/prefix/bin/atelier", to: "../../opt/atelier-1/atelier")
    try recipe("\(root)/prefix/share/atelier/images")
    let besideTheLink = locations(
      invoked: "\(root)/prefix/bin/atelier", real: "\(root)/opt/atelier-1/atelier")
    #expect(try besideTheLink.load("tiny").folder == "\(root)/prefix/share/atelier/images/tiny")
    // An unpacked folder: images/ right beside the binary.
    try binary("\(root)/unpacked/atelier")
    try recipe("\(root)/unpacked/images")
    let unpacked = locations(invoked: "\(root)/unpacked/atelier", real: nil)
    #expect(try unpacked.load("tiny").folder == "\(root)/unpacked/images/tiny")
  }

  @Test func fromTheHomeShareFolderAndTheSystemOnes() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    try binary("\(root)/elsewhere/atelier")
    try recipe("\(root)/home/.local/share/atelier/images", "dev-base")
    let found = locations(
      invoked: "\(root)/elsewhere/atelier", real: nil, home: "\(root)/home")
    #expect(
      try found.load("dev-base").folder == "\(root)/home/.local/share/atelier/images/dev-base")
    #expect(
      found.directories.suffix(2) == [
        "/usr/local/share/atelier/images", "/usr/share/atelier/images",
      ])
  }

  @Test func theExplicitFolderIsTheOnlyPlace() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    let (checkout, real) = try checkout()
    try recipe("\(root)/mine", "custom")
    let explicit = RecipeLocations.resolve(
      explicit: "\(root)/mine", executables: [real], home: nil)
    #expect(explicit.directories == ["\(root)/mine"])
    #expect(try explicit.load("custom").folder == "\(root)/mine/custom")
    let error = try #require(throws: ImageError.self) { try explicit.load("tiny") }
    #expect("\(error)".contains("in \(root)/mine)"), "\(error)")
    #expect(!"\(error)".contains(checkout))
  }

  @Test func aMissListsEveryPlaceItLookedAndTheKnownImages() throws {
    defer { try? fileManager.removeItem(atPath: root) }
    let (_, real) = try checkout()
    let found = locations(invoked: "", real: real, home: "\(root)/home")
    let error = try #require(throws: ImageError.self) { try found.load("nope") }
    let message = "\(error)"
    #expect(found.directories.count >= 5)
    for directory in found.directories {
      #expect(message.contains(directory), "\(directory) missing from: \(message)")
    }
    #expect(message.contains("; known images: ") && message.contains("tiny"), "\(message)")
    // Nothing anywhere: the message says how to point at the recipes instead.
    let nowhere = RecipeLocations(directories: ["\(root)/empty"])
    let none = try #require(throws: ImageError.self) { try nowhere.load("tiny") }
    #expect("\(none)".contains("set ATELIER_IMAGES_DIR"), "\(none)")
  }

  @Test func pathsAreNormalizedAsText() {
    defer { try? fileManager.removeItem(atPath: root) }
    #expect(PathText.normalized("/a/b/../c/./d//e") == "/a/c/d/e")
    #expect(PathText.normalized("/../x") == "/x")
    #expect(RecipeLocations.checkout(containing: "/w/c/.build/x86_64/release") == "/w/c")
    #expect(RecipeLocations.checkout(containing: "/usr/local/bin") == nil)
  }
}
