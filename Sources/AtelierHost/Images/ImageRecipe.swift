import AtelierCore
import Foundation

/// `images/<name>/manifest.json`: how an image is built.
public struct ImageRecipe: Codable, Sendable, Equatable {
  public enum Base: String, Codable, Sendable {
    /// busybox and the agent only.
    case busybox
    /// A Debian root made by debootstrap, with `packages`, a `user`, and `steps`.
    case debootstrap
  }
  public var name: String
  public var description: String
  public var base: Base
  public var diskSizeMb: Int
  public var suite: String?
  public var packages: [String]?
  /// A normal user (uid/gid 1000) with passwordless sudo.
  public var user: String?
  /// Shell commands run as root inside the new root (chroot) at the end.
  public var steps: [String]?

  /// The folder this recipe was read from (for files it refers to).
  public var folder: String?

  public static func load(name: String, from recipesDirectory: String) throws -> ImageRecipe {
    guard ImageName.isValid(name) else {
      throw ImageError("invalid image name \(name): use lowercase letters, digits, - and _")
    }
    let path = "\(recipesDirectory)/\(name)/manifest.json"
    guard let data = FileManager.default.contents(atPath: path) else {
      let known = available(in: recipesDirectory)
      throw ImageError(
        "no recipe for image \(name) in \(recipesDirectory)"
          + (known.isEmpty ? "" : " (known: \(known.joined(separator: ", ")))"))
    }
    var recipe: ImageRecipe
    do {
      recipe = try JSONDecoder().decode(ImageRecipe.self, from: data)
    } catch {
      throw ImageError("\(path) is not a valid recipe: \(error)")
    }
    guard recipe.name == name else {
      throw ImageError("\(path) names image \(recipe.name), expected \(name)")
    }
    guard (64...65536).contains(recipe.diskSizeMb) else {
      throw ImageError("\(path): diskSizeMb must be between 64 and 65536")
    }
    recipe.folder = "\(recipesDirectory)/\(name)"
    return recipe
  }

  public static func available(in recipesDirectory: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: recipesDirectory)) ?? []
    return names.filter {
      FileManager.default.fileExists(atPath: "\(recipesDirectory)/\($0)/manifest.json")
    }.sorted()
  }
}
