import Foundation
import Testing

@testable import AtelierHost

/// A sandbox folder is removed without following links inside it: what a link points at
/// survives, everything in the folder goes (the positive control).
@Suite struct FolderRemovalTests {
  @Test func linksInsideAreRemovedNotFollowed() throws {
    let root = NSTemporaryDirectory() + "atelier-removal-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: root) }
    let outside = "\(root)/outside"
    let tree = "\(root)/sandboxes/abc"
    let files = FileManager.default
    try files.createDirectory(atPath: outside, withIntermediateDirectories: true)
    try files.createDirectory(atPath: "\(tree)/deep/deeper", withIntermediateDirectories: true)
    try "victim".write(toFile: "\(outside)/victim", atomically: false, encoding: .utf8)
    try "mine".write(toFile: "\(tree)/deep/deeper/file", atomically: false, encoding: .utf8)
    try files.createSymbolicLink(atPath: "\(tree)/link-to-folder", withDestinationPath: outside)
    try files.createSymbolicLink(
      atPath: "\(tree)/deep/link-to-file", withDestinationPath: "\(outside)/victim")
    #expect(mkfifo("\(tree)/console.pipe", 0o600) == 0)

    FolderRemoval.removeTree(tree)

    #expect(!files.fileExists(atPath: tree))
    #expect(files.fileExists(atPath: "\(root)/sandboxes"))
    #expect(try String(contentsOfFile: "\(outside)/victim", encoding: .utf8) == "victim")
  }

  @Test func aMissingFolderIsNothingToDo() {
    FolderRemoval.removeTree("/nonexistent-\(UUID().uuidString)/abc")
  }
}
