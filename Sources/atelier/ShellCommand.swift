import ArgumentParser
import AtelierAgentAPI
import AtelierProcess
import Dispatch
import Foundation
import HummingbirdWSClient
import Logging
import NIOCore

extension SandboxCommand {
  struct Shell: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Open an interactive shell in a sandbox (exits with the shell's exit code).")
    @Argument(help: "Sandbox id.") var id: String
    @Option(help: "Run as this user (default: dev where it exists, else root).") var user: String?
    @Option(help: "Start in this folder.") var cwd: String?
    @Argument(parsing: .postTerminator, help: "A command instead of a login shell.") var command:
      [String] = []

    func run() async throws {
      let client = try ManagerClient.make(config: try loadConfig())
      let size = TerminalMode.size()
      let session = try await client.post(
        "/api/sandboxes/\(id)/terminal/sessions",
        TerminalCreateRequest(
          command: command.isEmpty ? nil : command, user: user, cwd: cwd, cols: size.cols,
          rows: size.rows),
        as: TerminalSession.self)
      let url = client.webSocketURL("/api/sandboxes/\(id)/terminal/sessions/\(session.id)/ws")
      var configuration = WebSocketClientConfiguration(maxFrameSize: 1 << 20)
      configuration.additionalHeaders[.authorization] = "Bearer \(client.token)"
      let terminal = TerminalMode()
      terminal.enterRaw()
      defer { terminal.restore() }
      let exitCode = ExitCodeBox()
      _ = try await WebSocketClient.connect(
        url: url, configuration: configuration, logger: Logger(label: "atelier.cli.shell")
      ) { inbound, outbound, _ in
        let input = Task {
          while !Task.isCancelled {
            let bytes = await BlockingIO.read(0, size: 4096)
            if bytes.isEmpty { break }
            try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
          }
        }
        let resizes = TerminalMode.onResize {
          let size = TerminalMode.size()
          let frame = TerminalControlFrame(type: .resize, cols: size.cols, rows: size.rows)
          Task {
            if let data = try? JSONEncoder().encode(frame) {
              try? await outbound.write(.text(String(decoding: data, as: UTF8.self)))
            }
          }
        }
        defer {
          resizes.cancel()
          input.cancel()
        }
        for try await message in inbound.messages(maxSize: 16 << 20) {
          switch message {
          case .binary(let buffer):
            FileHandle.standardOutput.write(Data(buffer.readableBytesView))
          case .text(let text):
            if let frame = try? JSONDecoder().decode(
              TerminalControlFrame.self, from: Data(text.utf8)),
              frame.type == .exit
            {
              exitCode.set(frame.exitCode ?? 0)
            }
          }
        }
      }
      terminal.restore()
      let code = exitCode.value
      if code != 0 { throw ExitCode(code) }
    }
  }
}

final class ExitCodeBox: @unchecked Sendable {
  private let lock = NSLock()
  private var code: Int32 = 0
  func set(_ value: Int32) { lock.withLock { code = value } }
  var value: Int32 { lock.withLock { code } }
}

/// Puts the local terminal in raw mode (keys go to the remote shell as typed) and back.
final class TerminalMode: @unchecked Sendable {
  private var saved = termios()
  private var isRaw = false

  func enterRaw() {
    guard isatty(0) == 1, tcgetattr(0, &saved) == 0 else { return }
    var raw = saved
    cfmakeraw(&raw)
    tcsetattr(0, TCSANOW, &raw)
    isRaw = true
  }

  func restore() {
    guard isRaw else { return }
    tcsetattr(0, TCSANOW, &saved)
    isRaw = false
  }

  static func size() -> (cols: Int, rows: Int) {
    var size = winsize()
    if ioctl(1, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0, size.ws_row > 0 {
      return (Int(size.ws_col), Int(size.ws_row))
    }
    return (80, 24)
  }

  /// Calls `handler` on every SIGWINCH until the returned source is cancelled.
  static func onResize(_ handler: @escaping @Sendable () -> Void) -> any DispatchSourceSignal {
    signal(SIGWINCH, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: SIGWINCH, queue: .global())
    source.setEventHandler(handler: handler)
    source.resume()
    return source
  }
}
