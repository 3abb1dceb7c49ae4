import AtelierCore
import AtelierHost
import Crypto
import Foundation

/// The files `atelier init` installs: this binary, the guest agent and the image recipes under
/// a prefix (`/usr/local` for the host; with `--local`, `~/.local` for a normal user).
extension Init {
  /// `<prefix>` for `--local`: `--prefix`, else `/usr/local` for root, `~/.local` otherwise.
  var localPrefix: String {
    if let prefix { return path(prefix) }
    if getuid() == 0 { return path("/usr/local") }
    let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
    return path("\(home)/.local")
  }

  /// `--local`: the binaries and recipes, and the image when `--image` asks for one.
  func localSteps() throws -> [Step] {
    var steps = try installSteps(prefix: localPrefix)
    if image != "none" {
      let installed = "\(localPrefix)/bin/atelier"
      let runner = SystemCommandRunner()
      let config = try loadConfig()
      steps.append(
        Step(
          description: "image \(image) in \(config.imagesDir)",
          isDone: { ImageCatalog(directory: config.imagesDir).image(named: image) != nil },
          apply: {
            let result = await runner.probe(
              Command(installed, ["images", "build", image], timeout: .seconds(3600)))
            guard result.exitCode == 0 else { throw CLIError(result.stderr) }
          }))
    }
    return steps
  }

  /// This binary, the guest agent and every image recipe folder, under `prefix`.
  func installSteps(prefix: String) throws -> [Step] {
    let config = try loadConfig()
    let binary = "\(executableDirectory())/atelier"
    let agent = resolvedAgentPath(config)
    var steps: [Step] = []
    for (source, target) in [
      (binary, "\(prefix)/bin/atelier"), (agent, "\(prefix)/bin/atelier-agent"),
    ] {
      steps.append(
        Step(
          description: "install \(target)",
          skipReason: FileManager.default.fileExists(atPath: source)
            ? nil : "\(source) is not built",
          isDone: { Self.sameFile(source, target) },
          apply: { try Self.install(source, at: target, mode: 0o755) }))
    }
    let recipeTarget = "\(prefix)/share/atelier/images"
    let locations = recipeLocations(config)
    guard let recipes = locations.firstWithRecipes else {
      steps.append(
        Step(
          description: "image recipes in \(recipeTarget)",
          skipReason:
            "no recipes found (looked in \(locations.directories.joined(separator: ", ")))",
          isDone: { true }, apply: {}))
      return steps
    }
    let files = Self.recipeFiles(in: recipes)
    steps.append(
      Step(
        description: "image recipes in \(recipeTarget)",
        isDone: {
          recipes == recipeTarget
            || files.allSatisfy { Self.sameFile("\(recipes)/\($0)", "\(recipeTarget)/\($0)") }
        },
        apply: {
          for file in files {
            try Self.install("\(recipes)/\(file)", at: "\(recipeTarget)/\(file)", mode: 0o644)
          }
        }))
    return steps
  }

  /// Every file of every recipe folder in `directory`, relative to it (`tiny/manifest.json`).
  static func recipeFiles(in directory: String) -> [String] {
    ImageRecipe.available(in: directory).flatMap { name -> [String] in
      let enumerator = FileManager.default.enumerator(atPath: "\(directory)/\(name)")
      var files: [String] = []
      while let relative = enumerator?.nextObject() as? String {
        var isDirectory: ObjCBool = false
        let full = "\(directory)/\(name)/\(relative)"
        if FileManager.default.fileExists(atPath: full, isDirectory: &isDirectory),
          !isDirectory.boolValue
        {
          files.append("\(name)/\(relative)")
        }
      }
      return files.sorted()
    }
  }

  /// Copies to a temporary name beside the target, then renames over it: a running binary
  /// cannot be overwritten in place ("text file busy"), and nothing half-written is left.
  static func install(_ source: String, at target: String, mode: Int) throws {
    let folder = (target as NSString).deletingLastPathComponent
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    let temporary = "\(folder)/.\((target as NSString).lastPathComponent).\(getpid()).tmp"
    try? FileManager.default.removeItem(atPath: temporary)
    try FileManager.default.copyItem(atPath: source, toPath: temporary)
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: temporary)
    guard rename(temporary, target) == 0 else {
      let reason = String(cString: strerror(errno))
      try? FileManager.default.removeItem(atPath: temporary)
      throw CLIError("cannot install \(target): \(reason)")
    }
  }

  static func sameFile(_ a: String, _ b: String) -> Bool {
    guard let first = FileManager.default.contents(atPath: a),
      let second = FileManager.default.contents(atPath: b)
    else { return false }
    return first.count == second.count && SHA256.hash(data: first) == SHA256.hash(data: second)
  }

  /// After `--local`: how to put the prefix's bin folder on PATH when it is not there yet.
  func printPathHint() {
    let bin = "\(localPrefix)/bin"
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    if path.split(separator: ":").contains(where: { $0 == bin }) { return }
    let home = ProcessInfo.processInfo.environment["HOME"] ?? NSHomeDirectory()
    // Debian's ~/.profile puts ~/.local/bin on PATH at login once the folder exists.
    let later =
      bin == "\(home)/.local/bin" ? " (Debian's ~/.profile adds it at your next login)" : ""
    print("\(bin) is not on your PATH: run `export PATH=\"\(bin):$PATH\"`\(later)")
  }
}
