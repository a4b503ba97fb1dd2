import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { isFerryError } from '../errors.js';
import { listLocks, newLockId, type LockRecord } from '../repository/lock-record.js';
import { decodeIndex, packFileSize } from '../repository/pack.js';
import { condemnedIndexKey, indexKey, packKey } from '../repository/pack-writer.js';

/**
 * The condemn-then-sweep protocol that lets garbage collection run while backups, restores and
 * health checks do (`docs/repository-format.md`, "Garbage collection"):
 *
 * 1. Condemn: for each pack to delete, copy its index object to `gc/condemned/`, delete it from
 *    `index/`, then list the live locks and record them, with the packs, in a batch object. A session
 *    whose lock is not among them wrote its lock after the index objects were gone, and loads the
 *    index only after writing its lock: it cannot deduplicate against a condemned pack.
 * 2. Sweep (this run or a later one): once none of a batch's recorded holders is alive and no
 *    restore or health check runs, each pack is deleted, unless its index object is back or a restore
 *    point now needs one of its blocks that no live pack holds; then its index is put back instead.
 */
export type CondemnReason = 'unused' | 'rewritten' | 'orphan' | 'adopted';

export interface GcBatch {
  format: 'ferry-gc-batch';
  version: 1;
  id: string;
  createdAt: string;
  /** Locks that were live when the packs left the index: the sweep waits until all are gone. */
  waitFor: string[];
  packs: { id: string; reason: CondemnReason; bytes: number | null }[];
}

export interface StoredBatch {
  key: string;
  batch: GcBatch;
}

const BATCHES = 'gc/pending/';

/**
 * The pending batches. An unreadable one is returned with `batch` undefined: its condemned copies are
 * then adopted into a new batch (waiting for whoever is live now, which is safe: a holder it waited
 * for is either still live or has committed what it needed) and its orphans are found again.
 */
export async function readBatches(backend: RepositoryBackend): Promise<{ readable: StoredBatch[]; broken: string[] }> {
  const readable: StoredBatch[] = [];
  const broken: string[] = [];
  for await (const key of backend.list(BATCHES)) {
    try {
      const batch = JSON.parse(Buffer.from(await backend.get(key)).toString('utf8')) as GcBatch;
      if (batch.format !== 'ferry-gc-batch' || !Array.isArray(batch.packs) || !Array.isArray(batch.waitFor)) throw new Error('not a batch');
      readable.push({ key, batch });
    } catch (err) {
      if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) continue;
      // A sealed batch that fails its tag (encrypted repositories) is broken like one that is not JSON.
      if (isFerryError(err) && !isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
      broken.push(key);
    }
  }
  return { readable: readable.sort((a, b) => a.key.localeCompare(b.key)), broken };
}

export interface Condemned {
  id: string;
  reason: CondemnReason;
  bytes: number | null;
  /** The live index object, for packs that have one; it moves to `gc/condemned/`. */
  indexBytes?: Uint8Array;
}

/** Step 1: takes the packs out of the index and records the batch. */
export async function condemn(backend: RepositoryBackend, packs: Condemned[], ownLock: string, format: 1 | 2 = 1): Promise<StoredBatch | undefined> {
  if (packs.length === 0) return undefined;
  for (const p of packs) {
    if (!p.indexBytes) continue;
    await backend.put(condemnedIndexKey(p.id), p.indexBytes);
    // Format 2: the consolidated index objects stay; the condemned copy takes the pack out of dedup.
    if (format === 1) await backend.delete(indexKey(p.id));
  }
  const live = (await listLocks(backend)).filter((l) => !l.stale && l.record && l.record.id !== ownLock);
  const id = newLockId();
  const batch: GcBatch = {
    format: 'ferry-gc-batch',
    version: 1,
    id,
    createdAt: new Date().toISOString(),
    waitFor: live.map((l) => l.record!.id),
    packs: packs.map(({ id: pid, reason, bytes }) => ({ id: pid, reason, bytes })),
  };
  const key = `${BATCHES}${id}.json`;
  await backend.put(key, Buffer.from(JSON.stringify(batch, null, 2) + '\n'));
  return { key, batch };
}

export interface SweepContext {
  backend: RepositoryBackend;
  ownLock: string;
  /** Fresh references: what the restore points need now (computed after the holders are gone). */
  references: () => Promise<Set<string>>;
  /** Hashes in every live index object now. */
  liveHashes: () => Promise<Set<string>>;
  /** Repository format (default 1); see `gc-v2.ts` for what changes. */
  format?: 1 | 2;
}

export interface SweepResult {
  deleted: number;
  bytes: number;
  resurrected: number;
  stillPending: number;
  /** Who the pending batches wait for. */
  holders: LockRecord[];
  /** Pack ids whose files were deleted (format 2: their condemned copies go after compaction). */
  deletedIds: Set<string>;
}

/** Step 2: sweeps every batch whose holders are gone (nothing, while a restore or health check runs). */
export async function sweep(ctx: SweepContext, batches: StoredBatch[]): Promise<SweepResult> {
  const result: SweepResult = { deleted: 0, bytes: 0, resurrected: 0, stillPending: 0, holders: [], deletedIds: new Set() };
  const live = (await listLocks(ctx.backend)).filter((l) => !l.stale && l.record && l.record.id !== ctx.ownLock).map((l) => l.record!);
  const readers = live.filter((l) => l.operation === 'restore' || l.operation === 'verify');
  const ready = batches.filter((b) => readers.length === 0 && b.batch.waitFor.every((id) => !live.some((l) => l.id === id)));
  for (const b of batches) {
    if (ready.includes(b)) continue;
    result.stillPending += b.batch.packs.length;
    for (const l of live) if ((b.batch.waitFor.includes(l.id) || readers.includes(l)) && !result.holders.includes(l)) result.holders.push(l);
  }
  if (ready.length === 0) return result;
  const refs = await ctx.references();
  const liveHashes = await ctx.liveHashes();
  // A restore that started meanwhile may have read a manifest that a prune then removed, before the
  // references above were taken: it could still read condemned packs. Leave them for the next run.
  const reader = (await listLocks(ctx.backend)).find((l) => !l.stale && (l.record?.operation === 'restore' || l.record?.operation === 'verify'));
  if (reader?.record) {
    result.stillPending += ready.reduce((n, b) => n + b.batch.packs.length, 0);
    result.holders.push(reader.record);
    return result;
  }
  for (const b of ready) {
    for (const p of b.batch.packs) await sweepPack(ctx.backend, p, refs, liveHashes, result, ctx.format ?? 1);
    await ctx.backend.delete(b.key);
  }
  return result;
}

async function sweepPack(backend: RepositoryBackend, p: GcBatch['packs'][number], refs: Set<string>, live: Set<string>, r: SweepResult, format: 1 | 2): Promise<void> {
  const copyKey = condemnedIndexKey(p.id);
  if (format === 1 && (await backend.has(indexKey(p.id)))) {
    await backend.delete(copyKey); // put back (resurrected, or a crash between copy and delete)
    return;
  }
  const copy = await backend.get(copyKey).catch((err) => {
    if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return undefined;
    throw err;
  });
  let size = p.bytes ?? 0;
  if (copy) {
    const { entries } = decodeIndex(copy, copyKey);
    size = packFileSize(entries);
    const needed = entries.some((e) => {
      const hex = e.hash.toString('hex');
      return refs.has(hex) && !live.has(hex);
    });
    if (needed && (await backend.has(packKey(p.id)))) {
      // Format 2: still listed by its index object, so dropping the copy is the put-back.
      if (format === 1) await backend.put(indexKey(p.id), copy);
      await backend.delete(copyKey);
      r.resurrected++;
      return;
    }
  }
  try {
    await backend.delete(packKey(p.id));
  } catch (err) {
    // The storage keeps it until a date the plan did not know: it stays condemned, a later gc retries.
    if (!isFerryError(err, 'REPO_IMMUTABLE')) throw err;
    r.stillPending++;
    return;
  }
  // Format 2: the copy keeps the pack out of dedup until no index object lists it (`compact`).
  if (format === 1) await backend.delete(copyKey);
  r.deletedIds.add(p.id);
  r.deleted++;
  r.bytes += size;
}
