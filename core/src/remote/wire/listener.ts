import type { Socket } from 'node:net';
import tls, { type Server, type TLSSocket } from 'node:tls';
import { FerryError } from '../../errors.js';
import { formatAddress, parseAddress } from './address.js';
import { encodeFrame, FrameKind } from './frame.js';
import { checkAllowed, type ProvenPeer } from './handshake.js';
import { PipeConnection } from './pipe-connection.js';
import { mapSocketError, type AuthMaterial } from './tls-auth.js';
import { DEFAULT_TIMEOUT_MS, type Listener, type ListenOptions } from './types.js';

/**
 * The listening side of the data pipe: a TLS server whose clients become Connections once they
 * passed TLS, HELLO and `allow`. Every failure of one client ends at `onRefused`; none reaches the
 * server itself, so the listener keeps serving.
 */
export class PipeListener {
  private readonly server: Server;
  private readonly timeoutMs: number;
  private readonly sockets = new Set<Socket>();
  /** Read at TCP accept: after a TLS failure has reset the socket its address is no longer known. */
  private readonly remotes = new WeakMap<Socket, string>();
  private readonly conns = new Set<PipeConnection>();

  constructor(private readonly opts: ListenOptions, private readonly material: AuthMaterial) {
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.server = tls.createServer({ ...material.server, handshakeTimeout: this.timeoutMs }, (s) => this.accept(s));
    this.server.on('connection', (s: Socket) => this.track(s));
    this.server.on('tlsClientError', (err, s) => this.onTlsError(err, s));
  }

  async start(): Promise<Listener> {
    const bind = parseAddress(this.opts.listen);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', (err) => reject(new FerryError('PIPE_UNREACHABLE', `cannot listen: ${err.message}`, { host: this.opts.listen }, { cause: err })));
      this.server.listen(bind.port, bind.host, () => resolve());
    });
    // After binding, server errors concern single sockets, which are handled where they occur.
    this.server.on('error', () => undefined);
    const bound = this.server.address();
    return { host: bind.host, port: typeof bound === 'object' && bound ? bound.port : bind.port, close: () => this.close() };
  }

  private track(s: Socket): void {
    this.sockets.add(s);
    this.remotes.set(s, remoteOf(s));
    s.setNoDelay(true);
    s.once('close', () => this.sockets.delete(s));
  }

  private onTlsError(err: Error, socket: TLSSocket): void {
    // `_parent` is the TCP socket the TLS socket wraps (Node's own field, there since Node 0.x).
    const remote = this.remotes.get((socket as unknown as { _parent?: Socket })._parent ?? socket) ?? remoteOf(socket);
    socket.destroy();
    this.refuse(mapSocketError(err, remote, 'tls', socket), remote);
  }

  private accept(socket: TLSSocket): void {
    const remote = remoteOf(socket);
    let proven: ProvenPeer;
    try {
      proven = this.material.proven(socket);
    } catch (err) {
      const e = (err as FerryError).at({ host: remote });
      socket.on('error', () => undefined);
      socket.end(encodeFrame(FrameKind.BYE, { error: { code: e.code, detail: e.detail } }));
      return this.refuse(e, remote);
    }
    PipeConnection.open(socket, {
      initiator: false,
      local: { role: this.opts.auth.role, name: this.opts.name ?? this.material.localName },
      address: remote,
      proven,
      check: (peer) => checkAllowed(peer, this.opts.allow),
      heartbeatMs: this.opts.heartbeatMs,
      timeoutMs: this.timeoutMs,
      maxFrameBytes: this.opts.maxFrameBytes,
      mapError: (err, inHello) => mapSocketError(err, remote, inHello ? 'tls' : 'open'),
    }).then((c) => this.handOver(c), (err: Error) => this.refuse(err, remote));
  }

  private handOver(c: PipeConnection): void {
    this.conns.add(c);
    void c.closed.then(() => this.conns.delete(c));
    try {
      this.opts.onConnection(c);
    } catch (err) {
      // A throwing handler must not take the listener down; the client learns it was dropped.
      void c.close(`the service failed to take the connection: ${(err as Error)?.message ?? String(err)}`);
    }
  }

  private refuse(err: Error, remote: string): void {
    try {
      this.opts.onRefused?.(err, remote);
    } catch {
      // Reporting a refusal is best effort; serving the next client matters more.
    }
  }

  /** Stops accepting, says goodbye to accepted connections, drops clients still in their handshake. */
  private async close(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.conns].map((c) => c.close('the listener is shutting down')));
    for (const s of this.sockets) s.destroy();
    await stopped;
  }
}

function remoteOf(socket: Socket): string {
  return socket.remoteAddress ? formatAddress(socket.remoteAddress.replace(/^::ffff:/, ''), socket.remotePort ?? 0) : 'unknown';
}
