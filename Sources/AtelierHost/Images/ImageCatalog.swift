import AtelierCore
import Foundation

/// A built image: its root disk, the kernel it boots with, and where it came from.
public struct ImageRecord: Codable, Sendable, Equatable {
  public var name: String
  public var description: String
  public var buildId: String
  public var kernel: GuestKernel
  /// The root disk, never modified once built (clones point at it).
  public var diskPath: String
  public var diskBytes: Int64
  public var builtAt: Date
  /// Hash of what went into the build (recipe and agent), to skip needless rebuilds.
  public var inputsHash: String

  public var disk: DiskAttachment { DiskAttachment(path: diskPath, format: .raw) }

  public var info: ImageInfo {
    ImageInfo(
      name: name, description: description, kernelVersion: kernel.version, diskBytes: diskBytes,
      builtAt: builtAt)
  }
}

/// Built images in `<data>/images/<name>/`: each build in `builds/<buildId>/`, and `current`
/// a symlink to the one new sandboxes use. Older builds stay while sandboxes still use them.
public struct ImageCatalog: Sendable {
  public let directory: String

  public init(directory: String) {
    self.directory = directory
  }

  public func currentLink(_ name: String) -> String { "\(directory)/\(name)/current" }
  public func buildsDirectory(_ name: String) -> String { "\(directory)/\(name)/builds" }

  public func image(named name: String) -> ImageRecord? {
    guard ImageName.isValid(name) else { return nil }
    return Self.read("\(currentLink(name))/image.json")
  }

  public func list() -> [ImageRecord] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.sorted().compactMap { image(named: $0) }
  }

  /// Every build of every image (for clean-up of unused ones).
  public func allBuilds() -> [ImageRecord] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
    return names.flatMap { name -> [ImageRecord] in
      let builds =
        (try? FileManager.default.contentsOfDirectory(atPath: buildsDirectory(name))) ?? []
      return builds.compactMap { Self.read("\(buildsDirectory(name))/\($0)/image.json") }
    }
  }

  static func read(_ path: String) -> ImageRecord? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return try? JSONDecoder.atelier.decode(ImageRecord.self, from: data)
  }

  /// Makes a finished build the current one, atomically (a new symlink renamed over the old).
  func publish(_ record: ImageRecord, from buildDirectory: String) throws {
    let builds = buildsDirectory(record.name)
    try FileManager.default.createDirectory(atPath: builds, withIntermediateDirectories: true)
    let final = "\(builds)/\(record.buildId)"
    try FileManager.default.moveItem(atPath: buildDirectory, toPath: final)
    let temporaryLink = "\(directory)/\(record.name)/.current-\(record.buildId)"
    try? FileManager.default.removeItem(atPath: temporaryLink)
    try FileManager.default.createSymbolicLink(
      atPath: temporaryLink, withDestinationPath: "builds/\(record.buildId)")
    guard rename(temporaryLink, currentLink(record.name)) == 0 else {
      throw ImageError("cannot publish image \(record.name): \(String(cString: strerror(errno)))")
    }
  }
}
