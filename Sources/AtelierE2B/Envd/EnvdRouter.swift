import AtelierCore
import AtelierHTTP
import AtelierManager
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// Router-wide: a request naming a sandbox in `E2b-Sandbox-Id` is for that sandbox's envd
/// and goes to the adapter's own router (E2B's SDK sends envd and control-plane requests to
/// the same host when `E2B_SANDBOX_URL` is the manager); every other request goes on.
public struct EnvdDispatchMiddleware<Context: RequestContext>: RouterMiddleware {
  let responder: RouterResponder<Context>

  public func handle(
    _ request: Request, context: Context,
    next: (Request, Context) async throws -> Response
  ) async throws -> Response {
    guard request.headers[.e2bSandboxId] != nil else { return try await next(request, context) }
    return try await responder.respond(to: request, context: context)
  }
}

/// envd's routes: Connect RPCs (`/process.Process/*`, `/filesystem.Filesystem/*`) and the
/// plain `/files` and `/health`.
struct EnvdRoutes<Context: RequestContext>: Sendable {
  let gate: EnvdGate
  let service: SandboxService
  let logger: Logger
  let watchers = EnvdWatchers()

  func buildResponder() -> RouterResponder<Context> {
    let router = Router(context: Context.self)
    router.get("health") { request, _ in
      do {
        _ = try await gate.open(request, resume: false)
        return Response(status: .noContent)
      } catch let refusal as EnvdRefusal {
        return refusal.response
      }
    }
    EnvdProcess(routes: self).addRoutes(to: router)
    EnvdFilesystem(routes: self).addRoutes(to: router)
    EnvdFiles(routes: self).addRoutes(to: router)
    EnvdWatch(routes: self, watchers: watchers).addRoutes(to: router)
    return router.buildResponder()
  }

  /// A unary Connect call: the request message (JSON), the call let through, the answer as
  /// JSON; errors as a Connect error with its HTTP status (refusals as E2B's proxy's).
  func unary<Input: Decodable & Sendable, Output: Encodable>(
    _ router: Router<Context>, _ path: String, _ input: Input.Type,
    _ handler: @escaping @Sendable (Input, EnvdCall) async throws -> Output
  ) {
    router.post(RouterPath(path)) { request, _ in
      do {
        let call = try await gate.open(request)
        let buffer = try await request.body.collect(upTo: Connect.maxMessageBytes)
        let data = buffer.readableBytes == 0 ? Data("{}".utf8) : Data(buffer.readableBytesView)
        let message: Input
        do {
          message = try JSONDecoder().decode(Input.self, from: data)
        } catch {
          throw ConnectError(.invalidArgument, "the request message is not valid: \(error)")
        }
        let output = try await handler(message, call)
        return jsonBody(output, contentType: Connect.unaryContentType)
      } catch let refusal as EnvdRefusal {
        return refusal.response
      } catch {
        let connect = ConnectError.from(error)
        log(connect, error, path)
        return connect.response
      }
    }
  }

  /// A server-streaming Connect call: refusals answer before the stream as E2B's proxy's;
  /// from then on the answer is 200 with envelopes as `handler` produces them, ended by an
  /// end-of-stream frame (`{}` or the error). The sandbox counts as in use for as long.
  func serverStream<Input: Decodable & Sendable>(
    _ router: Router<Context>, _ path: String, _ input: Input.Type,
    keepalive keepaliveMessage: Data = FrameSink.processKeepalive,
    _ handler: @escaping @Sendable (Input, EnvdCall, FrameSink) async throws -> Void
  ) {
    router.post(RouterPath(path)) { request, _ in
      let call: EnvdCall
      do {
        call = try await gate.open(request)
      } catch let refusal as EnvdRefusal {
        return refusal.response
      }
      let keepalive = request.headers[.keepalivePing].flatMap(Int.init).map {
        Duration.seconds(max(1, $0))
      }
      // The one request message is read before answering (the client sends it at once).
      let message: Result<Input, ConnectError>
      do {
        let payload = try await EnvelopeReader.single(request.body)
        message = .success(try JSONDecoder().decode(Input.self, from: payload))
      } catch let error as ConnectError {
        message = .failure(error)
      } catch {
        message = .failure(
          ConnectError(.invalidArgument, "the request message is not valid: \(error)"))
      }
      var headers = HTTPFields()
      headers[.contentType] = Connect.streamContentType
      return Response(
        status: .ok, headers: headers,
        body: ResponseBody { writer in
          await service.connectionOpened(call.sandboxId)
          let sink = FrameSink(keepalive: keepalive, message: keepaliveMessage)
          let producer = Task {
            do {
              try await handler(try message.get(), call, sink)
              sink.finish(nil)
            } catch {
              let connect = ConnectError.from(error)
              log(connect, error, path)
              sink.finish(connect)
            }
          }
          defer { producer.cancel() }
          do {
            for await frame in sink.frames { try await writer.write(frame) }
            try await writer.finish(nil)
          } catch {
            producer.cancel()
          }
          await service.connectionClosed(call.sandboxId)
        })
    }
  }

  /// Counts the sandbox as in use (not idle) while `work` runs.
  func inUse<T>(_ id: String, _ work: () async throws -> T) async throws -> T {
    await service.connectionOpened(id)
    do {
      let value = try await work()
      await service.connectionClosed(id)
      return value
    } catch {
      await service.connectionClosed(id)
      throw error
    }
  }

  func log(_ connect: ConnectError, _ error: any Error, _ path: String) {
    guard connect.code == .internal || connect.code == .unknown else { return }
    logger.error("envd \(path) failed: \(error)")
  }
}

/// Where a stream's handler puts its messages: each one becomes an envelope, in order,
/// with keepalive messages in between when the client asked for them (`Keepalive-Ping-
/// Interval`), and the end-of-stream frame last.
final class FrameSink: Sendable {
  let frames: AsyncStream<ByteBuffer>
  private let continuation: AsyncStream<ByteBuffer>.Continuation
  private let ticker: Task<Void, Never>?

  static let processKeepalive = Data(#"{"event":{"keepalive":{}}}"#.utf8)

  init(keepalive: Duration?, message keepaliveMessage: Data) {
    let (frames, continuation) = AsyncStream.makeStream(of: ByteBuffer.self)
    self.frames = frames
    self.continuation = continuation
    ticker = keepalive.map { interval in
      Task {
        while !Task.isCancelled {
          try? await Task.sleep(for: interval)
          if Task.isCancelled { break }
          continuation.yield(Connect.envelope(keepaliveMessage))
        }
      }
    }
  }

  func send<T: Encodable>(_ message: T) throws {
    continuation.yield(Connect.envelope(try JSONEncoder().encode(message)))
  }

  func finish(_ error: ConnectError?) {
    ticker?.cancel()
    continuation.yield(Connect.endFrame(error))
    continuation.finish()
  }
}
