import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Extent } from '../../contracts/extent.js';
import type { GuestOptions, GuestRuntime, GuestSession, GuestStepResult } from '../../contracts/guest-runtime.js';
import { FerryError, type ReportedError } from '../../errors.js';
import { connect, type Connection } from '../wire/index.js';
import { RequestPump } from '../wire/request-pump.js';
import { errorFromWire, type GuestMethod, type WireGuestOptions } from './guest-wire.js';

/**
 * The backup server's side of the guest interaction proxy: a GuestRuntime whose steps run on a
 * `ferry guest-proxy serve` host (the job's `guestProxies:`, tried in order until one answers).
 * One mutual-TLS connection per guest session; the proxy thaws and closes the session itself if
 * that connection ends first, so the contract's thaw guarantee survives a killed backup server.
 */
export class RemoteGuestRuntime implements GuestRuntime {
  constructor(
    private readonly proxies: string[],
    private readonly certs: string,
  ) {}

  async connect(vm: string, options: GuestOptions, signal?: AbortSignal): Promise<GuestSession> {
    if (options.agent !== undefined && typeof options.agent !== 'string') {
      // a source host's channel (libvirt's qemu-agent-command) lives in this process only
      throw new FerryError('JOB_INVALID', `guest of vm ${vm}: the guest agent is reached through the source host (${options.agent.label}), which a guest proxy cannot use; name agent: unix:PATH on the proxy's host, or use via: ssh`, { vm });
    }
    let lastErr: unknown;
    for (const address of this.proxies) {
      let conn: Connection;
      try {
        conn = await connect({ address, auth: { kind: 'certs', dir: this.certs, role: 'server' }, expectRole: 'proxy', signal });
      } catch (err) {
        lastErr = err;
        continue;
      }
      const calls = new GuestCalls(conn, address);
      try {
        const r = (await calls.request('guest.connect', { vm, options: toWire(options) }, signal)) as { label: string };
        return new RemoteGuestSession(calls, `${r.label} via guest proxy ${address}`);
      } catch (err) {
        await calls.close();
        throw err;
      }
    }
    throw lastErr instanceof FerryError
      ? new FerryError(lastErr.code, `no guest proxy answered (${this.proxies.join(', ')}): ${lastErr.detail}`, { ...lastErr.where, vm })
      : new FerryError('PIPE_UNREACHABLE', `no guest proxy answered (${this.proxies.join(', ')})`, { vm });
  }
}

/** GuestOptions as JSON: the key as base64, the scripts' contents (their paths are this host's). */
function toWire(o: GuestOptions): WireGuestOptions {
  const scripts: WireGuestOptions['scripts'] = {};
  for (const [step, p] of Object.entries(o.scripts)) {
    if (p) scripts[step as keyof GuestOptions['scripts']] = { name: path.basename(p), data: readFileSync(p).toString('base64') };
  }
  const c = o.credentials;
  return {
    ...o,
    credentials: {
      ...(c.privateKey && { privateKey: c.privateKey.toString('base64') }),
      ...(c.password !== undefined && { password: c.password }),
      ...(c.knownHosts !== undefined && { knownHosts: c.knownHosts }),
    },
    scripts,
  };
}

/** Requests and their answers (`guest.res` by id) over one connection. */
class GuestCalls {
  private readonly calls: RequestPump;

  constructor(conn: Connection, address: string) {
    this.calls = new RequestPump(conn, {
      answerType: 'guest.res',
      closed: () => new FerryError('PIPE_CLOSED', `the guest proxy at ${address} closed the connection`, { host: address }),
      settle: (w, m) => (m.header?.ok ? w.resolve(m.header.result) : w.reject(errorFromWire(m.header?.error as ReportedError, { host: address }))),
    });
  }

  request(type: string, args: Record<string, unknown>, signal?: AbortSignal): Promise<unknown> {
    return new Promise<unknown>((resolve, reject) => {
      let id = 0;
      const onAbort = (): void => void this.calls.conn.send({ type: 'guest.abort', header: { id } }).catch(() => undefined);
      signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => signal?.removeEventListener('abort', onAbort);
      id = this.calls.start((i) => ({ type, header: { id: i, ...args } }), { resolve: (v) => (done(), resolve(v)), reject: (e) => (done(), reject(e)) });
    });
  }

  close(): Promise<void> {
    return this.calls.close();
  }
}

class RemoteGuestSession implements GuestSession {
  constructor(
    private readonly calls: GuestCalls,
    readonly label: string,
  ) {}

  private call<T>(method: GuestMethod, signal?: AbortSignal, extra: Record<string, unknown> = {}): Promise<T> {
    return this.calls.request('guest.call', { method, ...extra }, signal) as Promise<T>;
  }

  preFreeze(signal?: AbortSignal): Promise<GuestStepResult> {
    return this.call('preFreeze', signal);
  }

  freeze(signal?: AbortSignal): Promise<GuestStepResult & { frozen: number }> {
    return this.call('freeze', signal);
  }

  thaw(signal?: AbortSignal): Promise<GuestStepResult> {
    return this.call('thaw', signal);
  }

  postThaw(signal?: AbortSignal): Promise<GuestStepResult> {
    return this.call('postThaw', signal);
  }

  afterBackup(signal?: AbortSignal): Promise<GuestStepResult> {
    return this.call('afterBackup', signal);
  }

  skipExtents(disk: { name: string; size?: number }): Promise<Extent[]> {
    return this.call('skipExtents', undefined, { disk });
  }

  async close(): Promise<void> {
    try {
      await this.call('close');
    } catch (err) {
      // a lost connection: the proxy closes the session itself when the connection ends
      if (!(err instanceof FerryError && err.code.startsWith('PIPE_'))) throw err;
    } finally {
      await this.calls.close();
    }
  }
}
