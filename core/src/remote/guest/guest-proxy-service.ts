import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { GuestOptions, GuestRuntime, GuestSession } from '../../contracts/guest-runtime.js';
import { FerryError } from '../../errors.js';
import type { PluginHost } from '../../plugins/plugin-host.js';
import { createPluginHost } from '../../plugins/create-plugin-host.js';
import { servePeers, type Connection, type WireMessage } from '../wire/index.js';
import { errorToWire, guestRequestProblem, type GuestMethod, type WireGuestOptions } from './guest-wire.js';

/** How long a lost connection's step in flight may take to stop before the clean-up runs anyway. */
const ABORT_GRACE_MS = 2000;

export interface GuestProxyOptions {
  /** The guest runtime registered for `os` on this host (`startGuestProxyService`: from its plugins). */
  runtimeFor(os: string, vm: string): Promise<GuestRuntime>;
  log?: (line: string) => void;
}

/**
 * The guest interaction proxy's service: for each backup-server connection, one guest session run
 * with the guest plugins of this host. Keeps the contract's invariants for a backup server that
 * went away: when the connection ends without `close`, whatever is due is done here: the in-flight
 * request is aborted, then `thaw` (if `freeze` was asked), `postThaw` (if `preFreeze` was), `close`.
 */
export class GuestProxyService {
  private readonly live = new Set<Promise<void>>();

  constructor(private readonly o: GuestProxyOptions) {}

  serve(conn: Connection): Promise<void> {
    const p = new ServedSession(conn, this.o).run().finally(() => this.live.delete(p));
    this.live.add(p);
    return p;
  }

  async close(): Promise<void> {
    await Promise.allSettled([...this.live]);
  }
}

class ServedSession {
  private session?: GuestSession;
  private options?: GuestOptions;
  private scriptDir?: string;
  private vm = '';
  private freezeDue = false;
  private postThawDue = false;
  private closed = false;
  private readonly inflight = new Map<number, AbortController>();
  private readonly tasks = new Set<Promise<void>>();
  private readonly log: (line: string) => void;

  constructor(
    private readonly conn: Connection,
    private readonly o: GuestProxyOptions,
  ) {
    this.log = o.log ?? (() => undefined);
  }

  async run(): Promise<void> {
    let lost: string | undefined;
    try {
      for (;;) {
        const m = await this.conn.receive();
        if (!m) break;
        if (m.type === 'guest.abort') {
          this.inflight.get(Number(m.header?.id))?.abort(new FerryError('GUEST_TIMEOUT', 'the backup server gave the step up'));
          continue;
        }
        const t = this.handle(m).finally(() => this.tasks.delete(t));
        this.tasks.add(t);
      }
    } catch (err) {
      lost = (err as Error).message;
    }
    // the backup server is gone: stop what runs, then what the contract owes the guest
    for (const c of this.inflight.values()) c.abort(new FerryError('PIPE_CLOSED', 'the backup server went away'));
    // A step in flight may not stop at once (a guest command runs to its end): thaw does not wait
    // for it longer than a moment; the runtime's thaw is safe alongside a freeze still answering.
    let grace: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.tasks]), new Promise((r) => (grace = setTimeout(r, ABORT_GRACE_MS)))]);
    clearTimeout(grace);
    if (this.session && !this.closed) {
      this.log(`vm ${this.vm}: the backup server left without closing the guest session${lost ? ` (${lost})` : ''}: thawing and closing it here`);
      await this.cleanUp();
    }
    await this.conn.close('done').catch(() => undefined);
  }

  private async handle(m: WireMessage): Promise<void> {
    const id = Number(m.header?.id);
    const problem = guestRequestProblem(m.type, m.header);
    if (problem) return this.answer(id, undefined, new FerryError('PIPE_PROTOCOL', problem, { host: this.conn.peer.address }));
    const ctl = new AbortController();
    this.inflight.set(id, ctl);
    try {
      const result = m.type === 'guest.connect' ? await this.connect(m.header!.vm as string, m.header!.options as WireGuestOptions, ctl.signal) : await this.call(m.header!.method as GuestMethod, m.header!.disk as { name: string; size?: number } | undefined, ctl.signal);
      await this.answer(id, result);
    } catch (err) {
      await this.answer(id, undefined, err);
    } finally {
      this.inflight.delete(id);
    }
  }

  private answer(id: number, result: unknown, err?: unknown): Promise<void> {
    const header = err === undefined ? { id, ok: true, result: result ?? null } : { id, ok: false, error: errorToWire(err) };
    return this.conn.send({ type: 'guest.res', header }).catch(() => undefined);
  }

  private async connect(vm: string, w: WireGuestOptions, signal: AbortSignal): Promise<{ label: string }> {
    if (this.session) throw new FerryError('PIPE_PROTOCOL', 'one guest session per connection: this one has one already');
    this.vm = vm;
    this.options = this.materialize(w);
    const runtime = await this.o.runtimeFor(w.os, vm);
    const session = await runtime.connect(vm, this.options, signal);
    this.session = session;
    this.log(`vm ${vm}: guest runtime deployed (${session.label}) for ${this.conn.peer.name}`);
    return { label: session.label };
  }

  private async call(method: GuestMethod, disk: { name: string; size?: number } | undefined, signal: AbortSignal): Promise<unknown> {
    const s = this.session;
    if (!s) throw new FerryError('PIPE_PROTOCOL', `guest.call ${method} before guest.connect`);
    switch (method) {
      case 'preFreeze':
        this.postThawDue = true;
        return s.preFreeze ? s.preFreeze(signal) : {};
      case 'freeze':
        this.freezeDue = true;
        return s.freeze(signal);
      case 'thaw':
        this.freezeDue = false;
        return s.thaw(signal);
      case 'postThaw':
        this.postThawDue = false;
        return s.postThaw ? s.postThaw(signal) : {};
      case 'afterBackup':
        return s.afterBackup ? s.afterBackup(signal) : {};
      case 'skipExtents':
        return s.skipExtents ? s.skipExtents(disk!) : [];
      case 'close':
        this.closed = true;
        await s.close();
        this.removeScripts();
        this.log(`vm ${this.vm}: guest runtime removed`);
        return {};
    }
  }

  /** Thaw and post-thaw when due, then close: each bounded by the session's timeout, errors logged. */
  private async cleanUp(): Promise<void> {
    const s = this.session!;
    this.closed = true;
    const ms = (this.options?.timeoutSeconds ?? 60) * 1000;
    const bounded = async (what: string, f: (signal: AbortSignal) => Promise<unknown>): Promise<void> => {
      const signal = AbortSignal.timeout(ms);
      try {
        await Promise.race([f(signal), new Promise((_r, reject) => signal.addEventListener('abort', () => reject(new Error(`${what} took longer than ${ms / 1000} s`))))]);
        this.log(`vm ${this.vm}: ${what} done`);
      } catch (err) {
        this.log(`vm ${this.vm}: ${what} failed: ${(err as Error).message}`);
      }
    };
    if (this.freezeDue) await bounded('thaw', (signal) => s.thaw(signal));
    if (this.postThawDue && s.postThaw) await bounded('postThaw', (signal) => s.postThaw!(signal));
    await bounded('close', () => s.close());
    this.removeScripts();
  }

  /** The options as the runtime takes them: the key as bytes, the scripts as files of a private folder here. */
  private materialize(w: WireGuestOptions): GuestOptions {
    const scripts: GuestOptions['scripts'] = {};
    for (const [step, s] of Object.entries(w.scripts)) {
      if (!s) continue;
      this.scriptDir ??= mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-proxy-'));
      const dir = path.join(this.scriptDir, step);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      writeFileSync(path.join(dir, path.basename(s.name)), Buffer.from(s.data, 'base64'), { mode: 0o700 });
      scripts[step as keyof GuestOptions['scripts']] = path.join(dir, path.basename(s.name));
    }
    const c = w.credentials;
    return {
      ...w,
      credentials: {
        ...(c.privateKey !== undefined && { privateKey: Buffer.from(c.privateKey, 'base64') }),
        ...(c.password !== undefined && { password: c.password }),
        ...(c.knownHosts !== undefined && { knownHosts: c.knownHosts }),
      },
      scripts,
    };
  }

  private removeScripts(): void {
    if (this.scriptDir) rmSync(this.scriptDir, { recursive: true, force: true });
    this.scriptDir = undefined;
  }
}

export interface GuestProxyConfig {
  listen?: string;
  certs?: string;
  /** Certificate CNs of the backup servers allowed to connect (default: any the CA signed with role server). */
  allow?: { names?: string[] };
  heartbeatMs?: number;
}

export interface RunningGuestProxy {
  host: string;
  port: number;
  close(): Promise<void>;
}

/**
 * `ferry guest-proxy serve`: listens with the `proxy` certificate of `certs` (made by `ferry certs
 * init`) and accepts backup servers (role `server`), as the data movers do.
 */
export async function startGuestProxyService(c: GuestProxyConfig, log: (line: string) => void = () => undefined): Promise<RunningGuestProxy> {
  if (!c.listen) throw new FerryError('CLI_USAGE', 'missing --listen HOST:PORT');
  if (!c.certs) throw new FerryError('CLI_USAGE', 'name --certs DIR (made by `ferry certs init DIR`)');
  const plugins: PluginHost = await createPluginHost();
  const service = new GuestProxyService({ runtimeFor: (os, vm) => plugins.create('guest-runtime', os, plugins.container, {}, { vm }), log });
  return servePeers({
    listen: c.listen,
    auth: { kind: 'certs', dir: path.resolve(c.certs), role: 'proxy' },
    accept: 'server',
    names: c.allow?.names,
    heartbeatMs: c.heartbeatMs,
    service,
    log,
  });
}
