/// Serializes operations per key (a sandbox id): a second stop waits for the first, then
/// finds the sandbox stopped. Different keys run in parallel.
public actor KeyedLock {
  private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

  public init() {}

  /// Keys held right now (the reconciler leaves their sandboxes alone).
  public var held: Set<String> { Set(waiting.keys) }

  public func acquire(_ key: String) async {
    if waiting[key] == nil {
      waiting[key] = []
      return
    }
    await withCheckedContinuation { waiting[key, default: []].append($0) }
  }

  public func release(_ key: String) {
    guard var queue = waiting[key] else { return }
    if queue.isEmpty {
      waiting[key] = nil
    } else {
      let next = queue.removeFirst()
      waiting[key] = queue
      next.resume()
    }
  }
}
