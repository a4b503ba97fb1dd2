import { isIP } from 'node:net';
import tls from 'node:tls';
import { FerryError } from '../../errors.js';
import { formatAddress, parseAddress } from './address.js';
import { checkExpectedRole } from './handshake.js';
import { PipeListener } from './listener.js';
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
  // each frame is written as one buffer, so this adds no tiny packets.
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
  const l = new PipeListener(opts, await loadAuth(opts.auth));
  return l.start();
}
