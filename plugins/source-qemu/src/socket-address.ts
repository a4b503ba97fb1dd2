import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { FerryError, type ErrorLocation } from '@ferry/core/plugin';

/**
 * Where a QMP monitor or an NBD server listens, as job files write it: `unix:/path/to.sock` or
 * `tcp:host:port` (IPv6 hosts in brackets: `tcp:[::1]:10809`).
 */
export type SocketAddress = { type: 'unix'; path: string } | { type: 'inet'; host: string; port: number };

/** The NBD port QEMU and every NBD client default to. */
export const NBD_DEFAULT_PORT = 10809;

/** Parses `unix:/path` or `tcp:host:port`; anything else is JOB_INVALID at `where`. */
export function parseAddress(text: string, where: ErrorLocation = {}): SocketAddress {
  if (text.startsWith('unix:')) {
    const p = text.slice('unix:'.length);
    if (p.length > 0) return { type: 'unix', path: path.resolve(p) };
  } else if (text.startsWith('tcp:')) {
    const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
    const port = m ? Number(m[2]) : 0;
    if (m && port > 0 && port < 65536) return { type: 'inet', host: m[1].replace(/^\[(.*)\]$/, '$1'), port };
  }
  throw new FerryError('JOB_INVALID', `"${text}" is not a socket address: write unix:/path/to.sock or tcp:host:port`, where);
}

export function formatAddress(a: SocketAddress): string {
  if (a.type === 'unix') return `unix:${a.path}`;
  return `tcp:${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}

export function connectOptions(a: SocketAddress): net.NetConnectOpts {
  return a.type === 'unix' ? { path: a.path } : { host: a.host, port: a.port };
}

/** `nbd-server-start` still takes the legacy (nested `data`) form of a socket address. */
export function legacyAddress(a: SocketAddress): Record<string, unknown> {
  if (a.type === 'unix') return { type: 'unix', data: { path: a.path } };
  return { type: 'inet', data: { host: a.host, port: String(a.port) } };
}

/**
 * Without an `nbd:` key the host's NBD server listens beside the QMP socket (a unix socket keeps the
 * export off the network), or on the QMP host's standard NBD port when QMP itself is TCP.
 */
export function defaultNbdAddress(qmp: SocketAddress, vm: string): SocketAddress {
  if (qmp.type === 'unix') return { type: 'unix', path: path.join(path.dirname(qmp.path), `${vm}.ferry-nbd.sock`) };
  return { type: 'inet', host: qmp.host, port: NBD_DEFAULT_PORT };
}

/**
 * Folder for fleecing overlays. QEMU itself creates the file (blockdev-create), so it must be a
 * folder QEMU can write: the QMP socket's folder, which QEMU created its socket in. A TCP monitor
 * gives no such hint; the system temp folder is the fallback.
 */
export function overlayFolder(qmp: SocketAddress): string {
  return qmp.type === 'unix' ? path.dirname(qmp.path) : os.tmpdir();
}

const NBD_MAGIC = Buffer.from('NBDMAGIC');
const NBD_IHAVEOPT = Buffer.from('IHAVEOPT');
/** Client flags FIXED_NEWSTYLE | NO_ZEROES, then option NBD_OPT_ABORT (2) without data. */
const NBD_POLITE_GOODBYE = Buffer.concat([Buffer.from([0, 0, 0, 3]), NBD_IHAVEOPT, Buffer.from([0, 0, 0, 2, 0, 0, 0, 0])]);

/**
 * True when something at `a` greets like a newstyle NBD server (`NBDMAGIC IHAVEOPT` and 2 bytes of
 * flags). Used to tell whether an NBD server QEMU says is running listens where the job expects.
 * The probe leaves with NBD_OPT_ABORT, so the server logs no broken handshake.
 */
export function probeNbd(a: SocketAddress, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = net.connect(connectOptions(a));
    let got = Buffer.alloc(0);
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      if (ok) sock.end(NBD_POLITE_GOODBYE);
      else sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.on('data', (chunk: Buffer) => {
      got = Buffer.concat([got, chunk]);
      if (got.length >= 18) done(got.subarray(0, 8).equals(NBD_MAGIC) && got.subarray(8, 16).equals(NBD_IHAVEOPT));
    });
    sock.on('error', () => done(false));
    sock.on('close', () => done(false));
  });
}
