/// Sandbox and snapshot ids: 12 characters of `[a-z0-9]`, starting with a letter so they are
/// also valid hostnames and file names.
public enum Identifier {
  static let letters = Array("abcdefghijklmnopqrstuvwxyz")
  static let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")

  public static func make(length: Int = 12) -> String {
    var generator = SystemRandomNumberGenerator()
    var result = String(letters.randomElement(using: &generator)!)
    for _ in 1..<length { result.append(alphabet.randomElement(using: &generator)!) }
    return result
  }

  /// The same rule as a regular expression, for the API document.
  public static let pattern = "^[a-z][a-z0-9]{11}$"

  public static func isValid(_ id: String) -> Bool {
    id.count == 12 && id.first.map { letters.contains($0) } == true
      && id.allSatisfy { alphabet.contains($0) }
  }
}

/// Image names: what a folder under `images/` and the API may use.
public enum ImageName {
  public static func isValid(_ name: String) -> Bool {
    !name.isEmpty && name.count <= 40 && name.first?.isLetter == true
      && name.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" || $0 == "_" }
      && name == name.lowercased()
  }
}
