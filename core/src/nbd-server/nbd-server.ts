import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { TlsOptions } from 'node:tls';
import { FerryError } from '../errors.js';
import { formatAddress, parseAddress } from '../remote/wire/address.js';
import type { NbdExport } from './nbd-export.js';
import { NbdSession } from './nbd-session.js';

export interface NbdServerOptions {
  exports: NbdExport[];
  /** Present: TLS is required (FORCEDTLS) and clients must present a certificate the CA signed. */
  tls?: TlsOptions;
  log?: (line: string) => void;
}

/** Where a server listens: `unix:PATH`, or `HOST:PORT` (port 0: any free port). */
export type ListenAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

export function parseListen(s: string): ListenAddress {
  if (s.startsWith('unix:')) {
    const p = s.slice('unix:'.length);
    if (!p) throw new FerryError('CLI_USAGE', '--listen unix: needs a socket path (unix:PATH)');
    return { kind: 'unix', path: path.resolve(p) };
  }
  return { kind: 'tcp', ...parseAddress(s) };
}

/**
 * An NBD server (fixed newstyle) over a set of exports: several clients and several connections
 * each, TLS when given certificates. `close` stops listening, ends every connection and waits for
 * the requests in flight.
 */
export class NbdServer {
  private server?: net.Server;
  private readonly sessions = new Set<NbdSession>();
  private readonly running = new Set<Promise<void>>();
  private stopping = false;
  private listened?: ListenAddress;

  constructor(private readonly opts: NbdServerOptions) {
    if (opts.exports.length === 0) throw new FerryError('INTERNAL', 'an NBD server without exports');
  }

  get exports(): NbdExport[] {
    return this.opts.exports;
  }

  /** The address clients connect to (the real port when 0 was asked for). */
  get address(): string {
    const a = this.listened;
    if (!a) return '';
    return a.kind === 'unix' ? `unix:${a.path}` : formatAddress(a.host, a.port);
  }

  /** `nbd://` URI of an export (nbds:// with TLS), as qemu and libnbd take them. */
  uri(e: NbdExport): string {
    const a = this.listened!;
    const scheme = this.opts.tls ? 'nbds' : 'nbd';
    const name = encodeURIComponent(e.name).replace(/%2F/g, '/');
    return a.kind === 'unix' ? `${scheme}+unix:///${name}?socket=${a.path}` : `${scheme}://${formatAddress(a.host, a.port)}/${name}`;
  }

  async listen(where: string): Promise<string> {
    const addr = parseListen(where);
    const server = net.createServer((socket) => this.accept(socket));
    if (addr.kind === 'unix') await removeStaleSocket(addr.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: NodeJS.ErrnoException) =>
        reject(new FerryError('SERVE_LISTEN', `cannot listen on ${where}: ${err.code ?? err.message}${err.code === 'EADDRINUSE' ? ' (the address is in use)' : ''}`, { host: where })),
      );
      if (addr.kind === 'unix') server.listen(addr.path, resolve);
      else server.listen(addr.port, addr.host, resolve);
    });
    server.on('error', (err) => this.log(`listener: ${err.message}`));
    this.server = server;
    const a = server.address();
    this.listened = addr.kind === 'unix' || typeof a !== 'object' || !a ? addr : { kind: 'tcp', host: addr.host, port: a.port };
    return this.address;
  }

  async close(): Promise<void> {
    this.stopping = true;
    const closed = new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    for (const s of this.sessions) s.close();
    await Promise.allSettled([...this.running]);
    await closed;
    if (this.listened?.kind === 'unix') {
      try {
        unlinkSync(this.listened.path);
      } catch {
        // already gone
      }
    }
  }

  private accept(socket: net.Socket): void {
    if (this.stopping) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const peer = socket.remoteAddress ? formatAddress(socket.remoteAddress, socket.remotePort ?? 0) : 'unix client';
    const s = new NbdSession(socket, {
      find: (name) => (name === '' ? this.opts.exports[0] : this.opts.exports.find((e) => e.name === name)),
      exports: () => this.opts.exports,
      tls: this.opts.tls,
      stopping: () => this.stopping,
      log: (line) => this.log(line),
    }, peer);
    this.sessions.add(s);
    const p = s.run().finally(() => {
      this.sessions.delete(s);
      this.running.delete(p);
    });
    this.running.add(p);
  }

  private log(line: string): void {
    this.opts.log?.(line);
  }
}

/** A socket file nobody listens on any more (a server that was killed) is removed; a live one is refused. */
async function removeStaleSocket(p: string): Promise<void> {
  if (!existsSync(p)) return;
  if (!lstatSync(p).isSocket()) throw new FerryError('SERVE_LISTEN', `${p} exists and is not a socket`, { object: p });
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(p);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (live) throw new FerryError('SERVE_LISTEN', `another server listens on ${p}`, { object: p });
  unlinkSync(p);
}
