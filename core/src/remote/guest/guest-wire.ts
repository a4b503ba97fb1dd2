import type { GuestOptions } from '../../contracts/guest-runtime.js';
import { FerryError, type ErrorCode, type ErrorLocation, type ReportedError } from '../../errors.js';

/**
 * The guest interaction proxy's messages (`ferry guest-proxy serve`, docs/architecture.md "Guest
 * interaction proxy"), over the data pipe's wire layer (mutual TLS, framed, heartbeats). One
 * connection carries one guest session; the backup server sends requests, the proxy answers each:
 *
 *   `guest.connect` {id, vm, options} → `guest.res` {id, ok, result: {label}} (runtime deployed)
 *   `guest.call` {id, method, disk?: {name, size?}} → `guest.res` {id, ok, result} (a GuestSession member)
 *   `guest.abort` {id}: the request `id` is given up (its signal aborts); its answer still comes
 *   failures: `guest.res` {id, ok: false, error: {code, message, where}}
 *
 * `options` is GuestOptions as JSON: the private key as base64, the user scripts' contents (the
 * paths are the backup server's) as {name, data}. Credentials travel only inside this connection and
 * are never logged. When the connection ends without `close` (a killed backup server, a lost
 * network), the proxy thaws, post-thaws and closes the guest session itself.
 */
export const GUEST_METHODS = ['preFreeze', 'freeze', 'thaw', 'postThaw', 'afterBackup', 'skipExtents', 'close'] as const;
export type GuestMethod = (typeof GUEST_METHODS)[number];

export interface WireScript {
  name: string;
  /** The script's bytes, base64. */
  data: string;
}

/** GuestOptions as they cross the wire. */
export interface WireGuestOptions extends Omit<GuestOptions, 'credentials' | 'scripts'> {
  credentials: { privateKey?: string; password?: string; knownHosts?: string };
  scripts: { preFreeze?: WireScript; postThaw?: WireScript; postBackup?: WireScript };
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** What the proxy checks in a request before it acts (an authenticated peer may still send nonsense). */
export function guestRequestProblem(type: string, h: unknown): string | undefined {
  if (!isObject(h) || !Number.isInteger(h.id)) return `${type}: header.id must be an integer`;
  if (type === 'guest.abort') return undefined;
  if (type === 'guest.call') {
    if (!(GUEST_METHODS as readonly string[]).includes(h.method as string)) return `guest.call: header.method must be one of ${GUEST_METHODS.join(', ')}`;
    if (h.method === 'skipExtents' && (!isObject(h.disk) || typeof h.disk.name !== 'string' || (h.disk.size !== undefined && !Number.isSafeInteger(h.disk.size)))) {
      return 'guest.call: header.disk must be {name, size?} for skipExtents';
    }
    return undefined;
  }
  if (type === 'guest.connect') {
    const o = h.options;
    if (typeof h.vm !== 'string' || !h.vm) return 'guest.connect: header.vm must be a string';
    if (!isObject(o) || typeof o.os !== 'string' || typeof o.via !== 'string') return 'guest.connect: header.options must name os and via';
    if (!Number.isInteger(o.timeoutSeconds) || (o.timeoutSeconds as number) < 1) return 'guest.connect: header.options.timeoutSeconds must be a positive integer';
    if (!isObject(o.credentials) || !isObject(o.scripts) || !Array.isArray(o.applications)) return 'guest.connect: header.options needs credentials, scripts and applications';
    for (const s of Object.values(o.scripts)) {
      if (!isObject(s) || typeof s.name !== 'string' || typeof s.data !== 'string') return 'guest.connect: each script must be {name, data}';
    }
    return undefined;
  }
  return `unknown request "${type}"`;
}

export function errorToWire(err: unknown): ReportedError {
  if (err instanceof FerryError) return { code: err.code, message: err.detail, where: err.where };
  return { code: 'INTERNAL', message: err instanceof Error ? (err.stack ?? err.message) : String(err), where: {} };
}

export function errorFromWire(e: ReportedError | undefined, where: ErrorLocation = {}): FerryError {
  return new FerryError((e?.code ?? 'INTERNAL') as ErrorCode, e?.message ?? 'the guest proxy reported an error without details', { ...where, ...(e?.where ?? {}) });
}
