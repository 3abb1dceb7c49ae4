import Foundation

/// The staging tree that becomes an image's root disk.
struct RootFilesystem {
  let path: String
  let runner: any CommandRunning
  let log: BuildLog

  static let agentInstallPath = "/usr/local/bin/atelier-agent"
  static let essentialDirectories = [
    "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "home", "var/log",
    "usr/bin", "usr/sbin", "usr/local/bin", "lib", "lib64", "mnt",
  ]

  var fileManager: FileManager { .default }

  func createDirectories(_ directories: [String]) throws {
    for directory in directories {
      let full = "\(path)/\(directory)"
      var isDirectory: ObjCBool = false
      // Debian's merged /usr makes /bin, /lib… symlinks: leave those as they are.
      if fileManager.fileExists(atPath: full, isDirectory: &isDirectory) { continue }
      if (try? fileManager.destinationOfSymbolicLink(atPath: full)) != nil { continue }
      try fileManager.createDirectory(atPath: full, withIntermediateDirectories: true)
    }
  }

  func write(_ relativePath: String, _ contents: String, mode: Int = 0o644) throws {
    let full = "\(path)/\(relativePath)"
    try fileManager.createDirectory(
      atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try? fileManager.removeItem(atPath: full)
    try Data(contents.utf8).write(to: URL(fileURLWithPath: full))
    try fileManager.setAttributes([.posixPermissions: mode], ofItemAtPath: full)
  }

  /// busybox with a link per applet, a root user, and nothing else.
  func populateBusybox(busyboxDeb: String, scratch: String) async throws {
    log.line("installing busybox")
    try createDirectories(Self.essentialDirectories)
    let extracted = "\(scratch)/busybox-deb"
    try await runner.run("dpkg-deb", "-x", busyboxDeb, extracted)
    try fileManager.copyItem(atPath: "\(extracted)/bin/busybox", toPath: "\(path)/bin/busybox")
    let applets = try await runner.run("\(path)/bin/busybox", "--list-full")
    for applet in applets.stdout.split(separator: "\n") where applet != "bin/busybox" {
      let link = "\(path)/\(applet)"
      guard !fileManager.fileExists(atPath: link) else { continue }
      let depth = applet.split(separator: "/").count - 1
      let target = String(repeating: "../", count: depth) + "bin/busybox"
      try? fileManager.createSymbolicLink(atPath: link, withDestinationPath: target)
    }
    try write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
    try write("etc/group", "root:x:0:\ntty:x:5:\n")
    try write("etc/shadow", "root:*:19000:0:99999:7:::\n", mode: 0o600)
    try write("etc/profile", "export PS1='\\u@\\h:\\w\\$ '\n")
  }

  /// A minimal Debian from the host's package mirror, with the recipe's packages.
  func debootstrap(recipe: ImageRecipe) async throws {
    let suite = recipe.suite ?? "bookworm"
    let packages = recipe.packages ?? []
    log.line("debootstrap \(suite) with \(packages.count) extra packages (this takes minutes)")
    var arguments = ["--variant=minbase"]
    if !packages.isEmpty { arguments.append("--include=\(packages.joined(separator: ","))") }
    arguments += [suite, path, Self.debianMirror()]
    try await runner.run(Command("debootstrap", arguments, timeout: .seconds(3600)))
    try createDirectories(Self.essentialDirectories)
    if let user = recipe.user {
      log.line("adding user \(user)")
      try await chroot(
        "id -u \(user) >/dev/null 2>&1 || useradd --create-home --uid 1000 --user-group --shell /bin/bash \(user)"
      )
      try write("etc/sudoers.d/\(user)", "\(user) ALL=(ALL) NOPASSWD:ALL\n", mode: 0o440)
      try await chroot(
        "mkdir -p /home/\(user)/workspace && chown -R \(user):\(user) /home/\(user)")
    }
  }

  /// The mirror the host's apt uses (so builds work where only that mirror is reachable).
  static func debianMirror() -> String {
    let sources = ["/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"]
    for file in sources {
      guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { continue }
      for line in text.split(separator: "\n") {
        let words = line.split(separator: " ")
        if words.first == "URIs:", words.count > 1, !words[1].contains("security") {
          return String(words[1])
        }
        if words.first == "deb", words.count > 2, !words[1].contains("security") {
          return String(words[1].hasPrefix("[") ? words[2] : words[1])
        }
      }
    }
    return "http://deb.debian.org/debian"
  }

  func chroot(_ script: String) async throws {
    try await runner.run(
      Command("chroot", [path, "/bin/sh", "-c", script], environment: ["LANG": "C.UTF-8"]))
  }

  func runSteps(_ steps: [String]) async throws {
    for (index, step) in steps.enumerated() {
      log.line("step \(index + 1)/\(steps.count): \(step.prefix(80))")
      try await chroot(step)
    }
  }

  /// The agent (stripped) and the shared libraries it needs that the root lacks.
  func installAgent(_ agent: String) async throws {
    let target = "\(path)\(Self.agentInstallPath)"
    try fileManager.createDirectory(
      atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
    try? fileManager.removeItem(atPath: target)
    let stripped = await runner.probe(Command("strip", ["--strip-all", "-o", target, agent]))
    if stripped.exitCode != 0 { try fileManager.copyItem(atPath: agent, toPath: target) }
    try fileManager.setAttributes([.posixPermissions: 0o755], ofItemAtPath: target)

    let ldd = try await runner.run("ldd", agent)
    if ldd.stdout.contains("libswiftCore") {
      throw ImageError(
        "the agent at \(agent) links the Swift runtime dynamically; build it with "
          + "`swift build -c release --static-swift-stdlib --product atelier-agent`")
    }
    for library in Self.libraryPaths(fromLdd: ldd.stdout) {
      let destination = "\(path)\(library)"
      if fileManager.fileExists(atPath: destination) { continue }
      try fileManager.createDirectory(
        atPath: (destination as NSString).deletingLastPathComponent,
        withIntermediateDirectories: true)
      let resolved = URL(fileURLWithPath: library).resolvingSymlinksInPath().path
      try fileManager.copyItem(atPath: resolved, toPath: destination)
    }
  }

  /// Absolute library paths in `ldd` output.
  static func libraryPaths(fromLdd output: String) -> [String] {
    output.split(separator: "\n").compactMap { line in
      let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
      if let arrow = words.firstIndex(of: "=>"), arrow + 1 < words.count,
        words[arrow + 1].hasPrefix("/")
      {
        return String(words[arrow + 1])
      }
      if let first = words.first, first.hasPrefix("/") { return String(first) }
      return nil
    }
  }

  /// `mkfs.ext4 -d` copies each file's owner, so a tree staged by a normal user would be that
  /// user's inside the guest (a uid the guest does not know). The files are given to root in
  /// the finished disk with `debugfs` (which edits an image file, no root needed). Only for
  /// builds without root: a root build keeps the owners its tree has (debootstrap's users).
  func giveToRoot(disk: String, scratch: String) async throws {
    var commands: [String] = []
    let enumerator = fileManager.enumerator(atPath: path)
    while let relative = enumerator?.nextObject() as? String {
      let quoted = "\"/\(relative.replacingOccurrences(of: "\"", with: "\\\""))\""
      commands += ["sif \(quoted) uid 0", "sif \(quoted) gid 0"]
    }
    guard !commands.isEmpty else { return }
    let script = "\(scratch)/owners.debugfs"
    try Data((commands.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: script))
    log.line("giving the image's \(commands.count / 2) files to root (debugfs)")
    let output = try await runner.run(Command("debugfs", ["-w", "-f", script, disk]))
    // debugfs exits 0 whatever its commands did: any line but its banner is an error.
    let problems = output.stderr.split(separator: "\n").filter { !$0.hasPrefix("debugfs ") }
    if !problems.isEmpty {
      throw ImageError(
        "debugfs could not give the files to root: \(problems.prefix(3).joined(separator: " | "))")
    }
  }

  func finish(imageName: String) async throws {
    try createDirectories(Self.essentialDirectories)
    try write("etc/atelier-image", "\(imageName)\n")
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
      let full = "\(path)/\(cache)"
      for entry in (try? fileManager.contentsOfDirectory(atPath: full)) ?? []
      where entry.hasSuffix(".deb") || entry.contains("_dists_") {
        try? fileManager.removeItem(atPath: "\(full)/\(entry)")
      }
    }
  }
}
