import { randomBytes } from 'node:crypto';
import os from 'node:os';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { whyGone, type ProcessIdentity } from '../util/process-identity.js';

/**
 * Lock objects, `locks/<lock-id>.json` (`docs/repository-format.md`, "Locks"). Each process that works
 * on a repository writes its own lock object and refreshes its `heartbeatAt`; what conflicts with
 * what is decided by reading all of them, so locks need nothing from a backend but atomic puts.
 */
export const LOCKS_PREFIX = 'locks/';

export type LockOperation = 'backup' | 'prune' | 'forget' | 'gc' | 'verify' | 'restore' | 'key' | 'upgrade';

export interface LockRecord {
  format: 'ferry-lock';
  version: 1;
  id: string;
  operation: LockOperation;
  /** VMs whose chains the holder writes (backup, prune, forget); empty for repository-wide operations. */
  vms: string[];
  job?: string;
  /** A backup's session id (= the id its restore points get). */
  session?: string;
  holder: ProcessIdentity;
  /** What the holder runs, for people reading `ferry unlock`. */
  command: string;
  startedAt: string;
  heartbeatAt: string;
}

/** A lock as found in the repository; `record` is missing when the object is unreadable. */
export interface FoundLock {
  key: string;
  record?: LockRecord;
  /** Why the lock no longer protects anything (holder gone, no heartbeat); undefined when live. */
  stale?: string;
}

/** A lock without a heartbeat for this long is stale (its holder hung, crashed or lost the repository). */
export const DEFAULT_STALE_AFTER_MS = 10 * 60_000;
export const DEFAULT_HEARTBEAT_MS = 60_000;

export function lockKey(id: string): string {
  return `${LOCKS_PREFIX}${id}.json`;
}

export function newLockId(now = new Date()): string {
  return `${now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(4).toString('hex')}`;
}

/**
 * Whether two operations may not run at once. Writers of one VM's chain (backup, prune, forget)
 * exclude each other for that VM; gc excludes gc and the deleters of points (prune, forget); two health checks would race on the damaged-blocks
 * list; two passphrase changes would each delete the other's new key object. gc tolerates backups,
 * restores and health checks through its condemn-then-sweep protocol.
 */
export function conflicts(a: Pick<LockRecord, 'operation' | 'vms'>, b: Pick<LockRecord, 'operation' | 'vms'>): boolean {
  const pair = [a.operation, b.operation].sort().join('+');
  if (a.operation === 'upgrade' || b.operation === 'upgrade') return true; // `ferry repository upgrade` excludes everything
  if (pair === 'gc+gc' || pair === 'gc+prune' || pair === 'forget+gc' || pair === 'verify+verify' || pair === 'key+key') return true;
  const chain = (op: LockOperation): boolean => op === 'backup' || op === 'prune' || op === 'forget';
  return chain(a.operation) && chain(b.operation) && a.vms.some((v) => b.vms.includes(v));
}

/** Why `lock` is stale, judged from this host and clock; undefined when its holder may be alive. */
export function staleness(lock: LockRecord, now: number, staleAfterMs = DEFAULT_STALE_AFTER_MS): string | undefined {
  if (lock.holder.host === os.hostname()) {
    const gone = whyGone(lock.holder);
    if (gone) return gone;
  }
  const beat = Date.parse(lock.heartbeatAt);
  if (!Number.isFinite(beat)) return 'the lock has no valid heartbeat time';
  if (now - beat > staleAfterMs) return `no heartbeat for ${Math.round((now - beat) / 1000)} s (since ${lock.heartbeatAt})`;
  return undefined;
}

/** Every lock object in the repository, with its staleness. Unreadable lock objects count as stale. */
export async function listLocks(backend: RepositoryBackend, staleAfterMs = DEFAULT_STALE_AFTER_MS): Promise<FoundLock[]> {
  const keys: string[] = [];
  for await (const k of backend.list(LOCKS_PREFIX)) if (k.endsWith('.json')) keys.push(k);
  const now = Date.now();
  const found = await Promise.all(
    keys.map(async (key): Promise<FoundLock | undefined> => {
      let raw: Uint8Array;
      try {
        raw = await backend.get(key);
      } catch (err) {
        if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return undefined; // released meanwhile
        throw err;
      }
      const record = parseLock(raw);
      if (!record) return { key, stale: 'the lock object is unreadable' };
      return { key, record, stale: staleness(record, now, staleAfterMs) };
    }),
  );
  return found.filter((f): f is FoundLock => f !== undefined);
}

function parseLock(raw: Uint8Array): LockRecord | undefined {
  try {
    const r = JSON.parse(Buffer.from(raw).toString('utf8')) as LockRecord;
    if (r.format !== 'ferry-lock' || typeof r.id !== 'string' || !r.holder || !Array.isArray(r.vms)) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

/** One line naming a lock's holder, for errors and `ferry unlock`. */
export function describeLock(r: LockRecord): string {
  const what = `${r.operation}${r.vms.length ? ` of vm ${r.vms.join(', ')}` : ''}${r.job ? ` (job ${r.job})` : ''}`;
  return `${what} by pid ${r.holder.pid} on host ${r.holder.host}, started ${r.startedAt}, last heartbeat ${r.heartbeatAt} [lock ${r.id}]`;
}

export function lockedError(mine: LockRecord, holders: LockRecord[]): FerryError {
  const first = holders[0];
  return new FerryError(
    'REPO_LOCKED',
    `cannot start ${mine.operation}: the repository is locked for ${holders.map(describeLock).join('; ')}. ` +
      'If that process is gone, `ferry unlock JOB.yaml` shows the lock and removes it once it is stale',
    { object: lockKey(first.id), host: first.holder.host, ...(first.vms.length === 1 && { vm: first.vms[0] }) },
  );
}
