import { RepositoryStorage } from './repository-storage.js';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { currentProcess } from '../util/process-identity.js';
import {
  conflicts,
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_STALE_AFTER_MS,
  listLocks,
  lockedError,
  lockKey,
  newLockId,
  type FoundLock,
  type LockOperation,
  type LockRecord,
} from './lock-record.js';

export interface LockRequest {
  operation: LockOperation;
  vms?: string[];
  job?: string;
  session?: string;
  command?: string;
}

export interface LockTiming {
  staleAfterMs?: number;
  heartbeatMs?: number;
}

/** Attempts when the only conflicts are locks taken in the same moment (both sides back off once). */
const ATTEMPTS = 4;
const YOUNG_MS = 3000;

/**
 * A lock this process holds (see `lock-record.ts` for the objects and the conflict rules).
 *
 * Taking a lock: write our lock object, then read every other one. A live conflicting lock makes us
 * delete ours and refuse with REPO_LOCKED naming the holder; two processes starting together may
 * both see each other, so when every conflict is seconds old both back off for a random moment and
 * try again (a bounded number of times). Stale locks (holder gone, no heartbeat) are ignored and
 * reported in `ignoredStale`; `ferry unlock` removes them.
 *
 * While held, a timer rewrites the object with a new `heartbeatAt`. `assertHeld` is called before
 * anything is committed: if the heartbeat could not be refreshed for half the stale timeout, another
 * process may already treat this lock as stale, so nothing more may be committed under it.
 */
export class RepositoryLock {
  private timer?: NodeJS.Timeout;
  private lastBeat = performance.now();
  private beatError?: unknown;
  private beating?: Promise<void>;
  private released = false;

  private constructor(
    private readonly backend: RepositoryBackend,
    readonly record: LockRecord,
    readonly ignoredStale: FoundLock[],
    private readonly timing: Required<LockTiming>,
  ) {}

  static async acquire(backend: RepositoryBackend, req: LockRequest, timing: LockTiming = {}): Promise<RepositoryLock> {
    const t = { staleAfterMs: timing.staleAfterMs ?? DEFAULT_STALE_AFTER_MS, heartbeatMs: timing.heartbeatMs ?? DEFAULT_HEARTBEAT_MS };
    for (let attempt = 1; ; attempt++) {
      const now = new Date();
      const record: LockRecord = {
        format: 'ferry-lock',
        version: 1,
        id: newLockId(now),
        operation: req.operation,
        vms: req.vms ?? [],
        ...(req.job && { job: req.job }),
        ...(req.session && { session: req.session }),
        holder: currentProcess(),
        command: req.command ?? process.argv.slice(1).join(' '),
        startedAt: now.toISOString(),
        heartbeatAt: now.toISOString(),
      };
      await backend.put(lockKey(record.id), encode(record));
      const others = (await listLocks(backend, t.staleAfterMs)).filter((l) => l.key !== lockKey(record.id));
      const live = others.filter((l) => !l.stale && l.record && conflicts(record, l.record)).map((l) => l.record!);
      if (live.length === 0) {
        await checkFormatUnchanged(backend, record);
        const lock = new RepositoryLock(backend, record, others.filter((l) => l.stale), t);
        lock.startHeartbeat();
        return lock;
      }
      await backend.delete(lockKey(record.id));
      const young = live.every((l) => Date.now() - Date.parse(l.startedAt) < YOUNG_MS);
      if (!young || attempt >= ATTEMPTS) throw lockedError(record, live);
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 200 * attempt));
    }
  }

  get id(): string {
    return this.record.id;
  }

  /** Throws REPO_LOCK_LOST when this lock may no longer protect us (see the class comment). */
  async assertHeld(): Promise<void> {
    const where = { object: lockKey(this.record.id) };
    if (this.released) throw new FerryError('REPO_LOCK_LOST', 'the lock was already released', where);
    const since = performance.now() - this.lastBeat;
    if (since > this.timing.staleAfterMs / 2) {
      const why = this.beatError instanceof Error ? `: ${this.beatError.message}` : '';
      throw new FerryError('REPO_LOCK_LOST', `the lock's heartbeat has not been refreshed for ${Math.round(since / 1000)} s${why}`, where);
    }
    if (!(await this.backend.has(lockKey(this.record.id)))) {
      throw new FerryError('REPO_LOCK_LOST', 'the lock object was removed (by `ferry unlock --force`?)', where);
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    clearInterval(this.timer);
    await this.beating; // a refresh landing after the delete would leave the lock behind
    await this.backend.delete(lockKey(this.record.id)).catch(() => undefined);
  }

  private startHeartbeat(): void {
    this.timer = setInterval(() => {
      if (this.beating || this.released) return;
      this.record.heartbeatAt = new Date().toISOString();
      const t0 = performance.now();
      this.beating = this.backend
        .put(lockKey(this.record.id), encode(this.record))
        .then(
          () => {
            this.lastBeat = t0;
            this.beatError = undefined;
          },
          (err) => {
            this.beatError = err;
          },
        )
        .finally(() => (this.beating = undefined));
    }, this.timing.heartbeatMs);
    this.timer.unref();
  }
}

/** Takes a lock when the backend can be written; a read-only repository (restore) goes on without. */
export async function lockForReading(backend: RepositoryBackend, req: LockRequest): Promise<RepositoryLock | undefined> {
  try {
    return await RepositoryLock.acquire(backend, req);
  } catch (err) {
    if (isFerryError(err, 'REPO_IO')) return undefined;
    throw err;
  }
}

/**
 * A process opened the repository (read its config) before it took its lock; an upgrade may have
 * finished in between. Reading the config again under the lock (one GET) makes sure it never writes
 * objects of one format into a repository of the other: REPO_FORMAT_UNSUPPORTED, lock removed.
 */
async function checkFormatUnchanged(backend: RepositoryBackend, record: LockRecord): Promise<void> {
  if (!(backend instanceof RepositoryStorage)) return;
  let version: unknown;
  try {
    version = (JSON.parse(Buffer.from(await backend.raw.get('ferry-repository.json')).toString('utf8')) as { version?: unknown }).version;
  } catch {
    return; // unreadable or gone: the operation's own reads will say so
  }
  if (version === backend.format) return;
  await backend.delete(lockKey(record.id));
  throw new FerryError(
    'REPO_FORMAT_UNSUPPORTED',
    `the repository at ${backend.location} changed to format version ${String(version)} (upgraded) after this process opened it at version ${backend.format}; run the command again`,
    { object: 'ferry-repository.json' },
  );
}

function encode(r: LockRecord): Buffer {
  return Buffer.from(JSON.stringify(r, null, 2) + '\n');
}
