import AtelierCore
import Foundation

/// Where image recipes (`<folder>/<name>/manifest.json`) are looked for, in order.
///
/// `atelier` may run from its checkout's `.build/release` (a symlink to the real build
/// folder), from a copy installed under a prefix (`/usr/local/bin`, `~/.local/bin`), or through
/// a symlink to either; the recipes are found from each of those paths:
/// - `ATELIER_IMAGES_DIR` (or the older `ATELIER_RECIPES_DIR`, or `recipesDir` in the file):
///   when set, the only place;
/// - for each path of the binary (as invoked, every symlink on the way, the real one):
///   `images/` beside it, the checkout it was built in (the folder holding `.build`), and the
///   prefix's share folder (`<prefix>/bin/atelier` → `<prefix>/share/atelier/images`);
/// - the share folders `atelier init` installs into: `~/.local/share/atelier/images`,
///   `/usr/local/share/atelier/images`, `/usr/share/atelier/images`.
public struct RecipeLocations: Sendable, Equatable {
  public let directories: [String]

  public init(directories: [String]) {
    var seen = Set<String>()
    self.directories = directories.filter { seen.insert($0).inserted }
  }

  public static func resolve(explicit: String, executables: [String], home: String?)
    -> RecipeLocations
  {
    if !explicit.isEmpty { return RecipeLocations(directories: [explicit]) }
    var directories: [String] = []
    for executable in executables {
      let folder = (executable as NSString).deletingLastPathComponent
      directories.append("\(folder)/images")
      if let checkout = checkout(containing: folder) { directories.append("\(checkout)/images") }
      let prefix = (folder as NSString).deletingLastPathComponent
      directories.append(PathText.normalized("\(prefix)/share/atelier/images"))
    }
    if let home, home.hasPrefix("/") {
      directories.append(PathText.normalized("\(home)/.local/share/atelier/images"))
    }
    directories += ["/usr/local/share/atelier/images", "/usr/share/atelier/images"]
    return RecipeLocations(directories: directories)
  }

  /// The folder that holds the SwiftPM build folder `folder` is in, if it is in one.
  static func checkout(containing folder: String) -> String? {
    let components = folder.split(separator: "/", omittingEmptySubsequences: true)
    guard let build = components.lastIndex(of: ".build") else { return nil }
    return "/" + components[..<build].joined(separator: "/")
  }

  /// The recipe `name` from the first folder that has it.
  public func load(_ name: String) throws -> ImageRecipe {
    guard ImageName.isValid(name) else {
      throw ImageError("invalid image name \(name): use lowercase letters, digits, - and _")
    }
    for directory in directories
    where FileManager.default.fileExists(atPath: "\(directory)/\(name)/manifest.json") {
      return try ImageRecipe.load(name: name, from: directory)
    }
    let known = available()
    throw ImageError(
      "no recipe for image \(name) (looked for \(name)/manifest.json in "
        + directories.joined(separator: ", ") + ")"
        + (known.isEmpty
          ? "; set ATELIER_IMAGES_DIR to the folder that holds the recipes"
          : "; known images: \(known.joined(separator: ", "))"))
  }

  /// Every recipe name found in any of the folders.
  public func available() -> [String] {
    Array(Set(directories.flatMap { ImageRecipe.available(in: $0) })).sorted()
  }

  /// The first folder that holds any recipe (what `atelier init` installs from).
  public var firstWithRecipes: String? {
    directories.first { !ImageRecipe.available(in: $0).isEmpty }
  }
}

/// The paths of the running binary: as it was invoked, each symlink on the way, the real one.
public enum ExecutablePaths {
  /// `invoked` (argv[0]: a path, or a name found in PATH) made absolute, then the target of each
  /// symlink it goes through, ending with `real` (`/proc/self/exe`) when that is different.
  /// Paths are kept as written, not resolved (`..` is removed as text), so that
  /// `.build/release/atelier` stays in `.build` even though `release` is a symlink.
  public static func chain(
    invoked: String, real: String?, currentDirectory: String, path: String?
  ) -> [String] {
    var paths: [String] = []
    if var current = absolute(invoked, currentDirectory: currentDirectory, path: path) {
      for _ in 0..<16 {
        paths.append(current)
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: current)
        else { break }
        current =
          target.hasPrefix("/")
          ? PathText.normalized(target)
          : PathText.normalized((current as NSString).deletingLastPathComponent + "/" + target)
      }
    }
    if let real, !real.isEmpty, !paths.contains(real) { paths.append(real) }
    return paths
  }

  /// The running binary's paths (argv[0] and /proc/self/exe).
  public static func current() -> [String] {
    chain(
      invoked: CommandLine.arguments.first ?? "",
      real: try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"),
      currentDirectory: FileManager.default.currentDirectoryPath,
      path: ProcessInfo.processInfo.environment["PATH"])
  }

  static func absolute(_ invoked: String, currentDirectory: String, path: String?) -> String? {
    if invoked.isEmpty { return nil }
    if invoked.hasPrefix("/") { return PathText.normalized(invoked) }
    if invoked.contains("/") { return PathText.normalized("\(currentDirectory)/\(invoked)") }
    // A bare name: the shell found it in PATH.
    guard let found = HostTools(path: path, systemDirectories: []).find(invoked) else {
      return nil
    }
    return found.hasPrefix("/") ? PathText.normalized(found) : nil
  }
}

enum PathText {
  /// `path` with `.`, `..` and repeated slashes removed as text (no symlink is followed).
  static func normalized(_ path: String) -> String {
    var parts: [Substring] = []
    for part in path.split(separator: "/", omittingEmptySubsequences: true) {
      if part == "." { continue }
      if part == ".." {
        if !parts.isEmpty { parts.removeLast() }
        continue
      }
      parts.append(part)
    }
    return "/" + parts.joined(separator: "/")
  }
}
