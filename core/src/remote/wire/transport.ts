import type { Socket } from 'node:net';
import { isIP } from 'node:net';
import tls, { type TLSSocket } from 'node:tls';
import { FerryError } from '../../errors.js';
import { formatAddress, parseAddress } from './address.js';
import { encodeFrame, FrameKind } from './frame.js';
import { checkAllowed, checkExpectedRole } from './handshake.js';
import { PipeConnection } from './pipe-connection.js';
import { loadAuth, mapSocketError } from './tls-auth.js';
import { DEFAULT_TIMEOUT_MS, type ConnectOptions, type Connection, type Listener, type ListenOptions } from './types.js';

/**
 * Opens a data-pipe connection: TCP, TLS (certificates or pre-shared key), then HELLO. Resolves only
 * when the listener accepted this side and the peer has an expected role; every failure is a coded
 * FerryError naming the address (PIPE_UNREACHABLE, PIPE_AUTH, PIPE_VERSION, PIPE_TIMEOUT, ...).
 */
export async function connect(opts: ConnectOptions): Promise<Connection> {
  const { host, port } = parseAddress(opts.address);
  const address = formatAddress(host, port);
  const material = await loadAuth(opts.auth);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  if (opts.signal?.aborted) throw aborted(address, opts.signal);
  const socket = tls.connect({ ...material.client, host, port, ...(isIP(host) ? {} : { servername: host }) });
  // The pipe's small request/answer messages ("known?", acks) must not wait for Nagle's timer;
  // frames are corked whole, so this adds no tiny packets.
  socket.setNoDelay(true);
  let tcpUp = false;
  socket.once('connect', () => (tcpUp = true));
  const timer = setTimeout(() => {
    socket.destroy(tcpUp
      ? new FerryError('PIPE_TIMEOUT', `TLS handshake and HELLO not done within ${timeoutMs} ms`, { host: address })
      : new FerryError('PIPE_UNREACHABLE', `no TCP connection within ${timeoutMs} ms`, { host: address }));
  }, timeoutMs);
  const onAbort = (): void => void socket.destroy(aborted(address, opts.signal!));
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', (err) => reject(mapSocketError(err, address, tcpUp ? 'tls' : 'tcp')));
    });
    const proven = material.proven(socket);
    return await PipeConnection.open(socket, {
      initiator: true,
      local: { role: opts.auth.role, name: opts.name ?? material.localName },
      address,
      proven,
      check: (peer) => checkExpectedRole(peer, opts.expectRole),
      heartbeatMs: opts.heartbeatMs,
      timeoutMs,
      maxFrameBytes: opts.maxFrameBytes,
      mapError: (err, inHello) => mapSocketError(err, address, inHello ? 'tls' : 'open'),
    });
  } catch (err) {
    socket.destroy();
    throw err instanceof FerryError ? err.at({ host: address }) : mapSocketError(err as Error, address, 'tls');
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}

function aborted(address: string, signal: AbortSignal): FerryError {
  return new FerryError('PIPE_CLOSED', `connecting was aborted: ${String((signal.reason as Error)?.message ?? signal.reason)}`, { host: address }, { cause: signal.reason });
}

/**
 * Listens for data-pipe clients. Each client must pass TLS, send a valid HELLO and match `allow`
 * before `onConnection` sees it; a refused client is reported to `onRefused` (with the coded error
 * and its address) and told why in a BYE frame where the protocol got that far. One bad client
 * never stops the listener.
 */
export async function listen(opts: ListenOptions): Promise<Listener> {
  const bind = parseAddress(opts.listen);
  const material = await loadAuth(opts.auth);
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const sockets = new Set<Socket>();
  // Read at TCP accept: after a TLS failure has reset the socket its address is no longer known.
  const remotes = new WeakMap<Socket, string>();
  const conns = new Set<PipeConnection>();
  const refuse = (err: Error, remote: string): void => {
    try {
      opts.onRefused?.(err, remote);
    } catch {
      // Reporting a refusal is best effort; serving the next client matters more.
    }
  };

  const accept = (socket: TLSSocket): void => {
    const remote = remoteOf(socket);
    let proven;
    try {
      proven = material.proven(socket);
    } catch (err) {
      const e = (err as FerryError).at({ host: remote });
      socket.end(encodeFrame(FrameKind.BYE, { error: { code: e.code, detail: e.detail } }));
      socket.on('error', () => undefined);
      return refuse(e, remote);
    }
    PipeConnection.open(socket, {
      initiator: false,
      local: { role: opts.auth.role, name: opts.name ?? material.localName },
      address: remote,
      proven,
      check: (peer) => checkAllowed(peer, opts.allow),
      heartbeatMs: opts.heartbeatMs,
      timeoutMs,
      maxFrameBytes: opts.maxFrameBytes,
      mapError: (err, inHello) => mapSocketError(err, remote, inHello ? 'tls' : 'open'),
    }).then((c) => {
      conns.add(c);
      void c.closed.then(() => conns.delete(c));
      try {
        opts.onConnection(c);
      } catch (err) {
        // A throwing handler must not take the listener down; the client learns it was dropped.
        void c.close(`the service failed to take the connection: ${(err as Error)?.message ?? String(err)}`);
      }
    }, (err: Error) => refuse(err, remote));
  };

  const server = tls.createServer({ ...material.server, handshakeTimeout: timeoutMs }, accept);
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    remotes.set(s, remoteOf(s));
    s.setNoDelay(true);
    s.once('close', () => sockets.delete(s));
  });
  server.on('tlsClientError', (err, socket) => {
    // `_parent` is the TCP socket the TLS socket wraps (Node's own field, stable since Node 0.x).
    const remote = remotes.get((socket as unknown as { _parent?: Socket })._parent ?? socket) ?? remoteOf(socket);
    socket.destroy();
    refuse(mapSocketError(err, remote, 'tls', socket), remote);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err) => reject(new FerryError('PIPE_UNREACHABLE', `cannot listen: ${err.message}`, { host: opts.listen }, { cause: err })));
    server.listen(bind.port, bind.host, () => resolve());
  });
  server.on('error', () => undefined);
  const bound = server.address();
  const port = typeof bound === 'object' && bound ? bound.port : bind.port;
  return {
    host: bind.host,
    port,
    close: async () => {
      const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
      await Promise.all([...conns].map((c) => c.close('the listener is shutting down')));
      for (const s of sockets) s.destroy();
      await stopped;
    },
  };
}

function remoteOf(socket: Socket): string {
  return socket.remoteAddress ? formatAddress(socket.remoteAddress.replace(/^::ffff:/, ''), socket.remotePort ?? 0) : 'unknown';
}
