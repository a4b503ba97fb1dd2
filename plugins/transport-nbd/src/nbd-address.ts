import net from 'node:net';

/** Where an NBD server listens, and the export an address URI may name. */
export type NbdEndpoint =
  | { kind: 'unix'; path: string; exportName?: string; tls?: boolean }
  | { kind: 'tcp'; host: string; port: number; exportName?: string; tls?: boolean };

/** The IANA port for NBD, used when an address names no port. */
export const NBD_DEFAULT_PORT = 10809;

/**
 * Parses the address forms a source host may give:
 * `unix:/path`, `tcp:host:port` (`tcp:[::1]:port` for IPv6), and the NBD URI forms
 * `nbd://host[:port][/export]`, `nbds://...` (TLS), `nbd+unix:///export?socket=/path`,
 * `nbds+unix:///export?socket=/path`. Throws an Error saying what is wrong; callers add context.
 */
export function parseNbdAddress(address: string): NbdEndpoint {
  if (address.startsWith('unix:') && !address.startsWith('unix://')) {
    const path = address.slice('unix:'.length);
    if (!path) throw new Error(`address ${address} names no socket path`);
    return { kind: 'unix', path };
  }
  if (address.startsWith('tcp:')) return parseHostPort(address, address.slice('tcp:'.length));
  if (/^nbds?(\+unix)?:\/\//.test(address)) return parseNbdUri(address);
  throw new Error(`address ${address} is not unix:/path, tcp:host:port or an nbd:// URI`);
}

function parseNbdUri(address: string): NbdEndpoint {
  let url: URL;
  try {
    url = new URL(address);
  } catch {
    throw new Error(`address ${address} is not a valid NBD URI`);
  }
  const tls = url.protocol.startsWith('nbds');
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol.endsWith('+unix:')) {
    const path = url.searchParams.get('socket');
    if (!path) throw new Error(`address ${address} has no ?socket= parameter`);
    return { kind: 'unix', path, exportName, tls };
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) throw new Error(`address ${address} names no host`);
  const port = url.port ? Number(url.port) : NBD_DEFAULT_PORT;
  return { kind: 'tcp', host, port, exportName, tls };
}

function parseHostPort(address: string, rest: string): NbdEndpoint {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(rest);
  if (!m) throw new Error(`address ${address} is not tcp:host:port`);
  const port = Number(m[3]);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`address ${address} has an invalid port`);
  return { kind: 'tcp', host: m[1] ?? m[2], port };
}

/** The address in the `unix:` / `tcp:` form, for messages. */
export function formatNbdEndpoint(e: NbdEndpoint): string {
  if (e.kind === 'unix') return `unix:${e.path}`;
  return net.isIPv6(e.host) ? `tcp:[${e.host}]:${e.port}` : `tcp:${e.host}:${e.port}`;
}

/**
 * Opens the byte stream to the server. Resolves once connected; rejects with the socket error
 * (ECONNREFUSED, ENOENT, ...) or when `timeoutMs` passes first. With `onread`, received bytes go
 * to its callback instead of 'data' events (see ByteFeed).
 */
export function connectNbdEndpoint(e: NbdEndpoint, timeoutMs: number, onread?: net.OnReadOpts): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = e.kind === 'unix' ? net.connect({ path: e.path, onread }) : net.connect({ host: e.host, port: e.port, onread });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`connecting timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      // Later failures surface as 'close' to whoever reads the socket; none may go uncaught.
      socket.on('error', () => undefined);
      // Requests are small and latency-bound; Nagle would hold them back behind one another.
      socket.setNoDelay(true);
      resolve(socket);
    });
    const onError = (err: Error): void => {
      clearTimeout(timer);
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
  });
}
