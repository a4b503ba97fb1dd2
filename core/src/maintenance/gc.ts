import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { damageIndex, readDamagedBlocks } from '../repository/damaged-blocks.js';
import { describeLock, listLocks } from '../repository/lock-record.js';
import { decodeIndex } from '../repository/pack.js';
import { condemnedIndexKey, packIdOf, packKey } from '../repository/pack-writer.js';
import type { Repository } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import { loadPackState, planCollection, type GcPlan, type PackState } from './gc-plan.js';
import { condemn, sweep, type Condemned } from './gc-protocol.js';
import { rewritePacks } from './gc-rewrite.js';
import { compact, liveHashesV2, loadPackStateV2, type IndexObjectsV2 } from './gc-v2.js';
import { loadPoints, referencedHashes, type LoadedPoints } from './points-reader.js';
import { pointIdTime } from '../repository/point-id.js';

export interface GcOptions {
  dryRun?: boolean;
  /** Temporary files and maps of uncommitted points younger than this stay. Default 1 hour. */
  graceMs?: number;
  /** A partly used pack is rewritten when at least this share of it is unused. Default 20 (%). */
  rewriteThresholdPercent?: number;
}

export interface GcReport {
  repository: string;
  dryRun: boolean;
  graceSeconds: number;
  rewriteThresholdPercent: number;
  restorePoints: number;
  referencedBlocks: number;
  packs: { total: number; unused: number; rewritten: number; partlyUsedKept: number; orphaned: number; unreadableIndex: number };
  rewriteSkipped: { pack: string; why: string }[];
  /** Packs taken out of the index this run (unused, rewritten, orphaned, adopted). */
  condemnedPacks: number;
  deletedPacks: number;
  /** Condemned packs whose index came back because a restore point needs them after all. */
  resurrectedPacks: number;
  /** Condemned packs waiting until the sessions that might use them end; a later gc deletes them. */
  pending: { packs: number; waitingFor: string[] };
  /** Bytes of packs deleted minus bytes of the packs written by rewriting (dry run: the estimate). */
  bytesReclaimed: number;
  bytesRewritten: number;
  /** Unused bytes left in partly used packs below the rewrite threshold. */
  wasteBytesLeft: number;
  uncommittedMapsRemoved: number;
  temporaryFilesRemoved: number;
  /**
   * Format 2 with immutability: packs gc would have removed or rewritten but left alone because
   * their retain-until date has not passed, and the latest such date (a later gc takes them).
   */
  retainedUntil?: { packs: number; until: string };
  /** Format 2: index objects replaced by one merged object this run (deleted once it was durable). */
  indexObjectsMerged?: number;
  durationMs: number;
}

const HOUR = 3_600_000;

/**
 * Garbage collection: removes packs (and their index objects) no restore point needs, rewrites
 * partly used packs above the threshold, and cleans maps of uncommitted points and temporary files
 * older than the grace period. Safe while backups, restores and health checks run (see
 * `gc-protocol.ts`); excludes other gc runs and prunes through its lock.
 */
export async function runGc(repo: Repository, opts: GcOptions = {}): Promise<GcReport> {
  const t0 = performance.now();
  const graceMs = opts.graceMs ?? HOUR;
  const threshold = opts.rewriteThresholdPercent ?? 20;
  const lock = opts.dryRun ? undefined : await RepositoryLock.acquire(repo.backend, { operation: 'gc' });
  try {
    const state: PackState & { v2?: IndexObjectsV2 } = repo.format === 2 ? await loadPackStateV2(repo.backend) : await loadPackState(repo.backend);
    const loaded = await loadPoints(repo);
    const referenced = await referencedHashes(repo, loaded, true);
    const plan = planCollection(state, referenced, damageIndex(await readDamagedBlocks(repo.backend)), threshold / 100);
    const retained = await holdRetained(repo, state, plan);
    const report = planReport(repo, state, plan, loaded.points.length, referenced.size, graceMs, threshold);
    if (retained) report.retainedUntil = retained;
    report.dryRun = !lock;
    if (lock) await collect({ repo, lock, state, plan, loaded, referenced, graceMs }, report);
    report.durationMs = Math.round(performance.now() - t0);
    return report;
  } finally {
    await lock?.release();
  }
}

/** What one gc run knows after its mark phase. */
interface GcRun {
  repo: Repository;
  lock: RepositoryLock;
  state: PackState & { v2?: IndexObjectsV2 };
  plan: GcPlan;
  loaded: LoadedPoints;
  referenced: Set<string>;
  graceMs: number;
}

/** Rewrite, condemn, sweep, then the small leftovers; fills in `report`. */
async function collect(run: GcRun, report: GcReport): Promise<void> {
  const { repo, lock, state, plan } = run;
  const backend = repo.backend;
  const rewritten = await rewritePacks(backend, plan.rewrite, repo.cipher, repo.format);
  report.rewriteSkipped = rewritten.skipped;
  report.packs.rewritten = rewritten.done.length;
  report.bytesRewritten = rewritten.bytesWritten;
  for (const id of plan.strayCopies) await backend.delete(condemnedIndexKey(id));
  const packs: Condemned[] = [
    ...plan.unused.map((p): Condemned => ({ id: p.id, reason: 'unused', bytes: state.files.has(p.id) ? p.size : 0, indexBytes: p.indexBytes })),
    ...rewritten.done.map((p): Condemned => ({ id: p.id, reason: 'rewritten', bytes: p.size, indexBytes: p.indexBytes })),
    ...plan.orphans.map((id): Condemned => ({ id, reason: 'orphan', bytes: null })),
    ...plan.adopt.map((id): Condemned => ({ id, reason: 'adopted', bytes: null })),
  ];
  await lock.assertHeld();
  const batch = await condemn(backend, packs, lock.id, repo.format);
  report.condemnedPacks = packs.length;
  const swept = await sweep(
    {
      backend,
      ownLock: lock.id,
      references: async () => union(run.referenced, await referencedHashes(repo, await loadPoints(repo, run.loaded.keys), true)),
      liveHashes: () => (state.v2 ? liveHashesV2(backend, state.v2) : liveHashes(backend, state)),
      format: repo.format,
    },
    [...state.batches, ...(batch ? [batch] : [])],
  );
  if (state.v2) {
    await lock.assertHeld();
    report.indexObjectsMerged = await compact(backend, state.v2, swept.deletedIds, repo.cipher, (k) => retainedAfterNow(repo, state.v2!, k));
  }
  for (const key of state.brokenBatches) await backend.delete(key);
  report.deletedPacks = swept.deleted;
  report.resurrectedPacks = swept.resurrected;
  report.pending = { packs: swept.stillPending, waitingFor: swept.holders.map(describeLock) };
  report.bytesReclaimed = swept.bytes - rewritten.bytesWritten;
  report.uncommittedMapsRemoved = await removeUncommittedMaps(repo, run.graceMs);
  report.temporaryFilesRemoved = (await backend.removeStaleTemporaries?.(run.graceMs)) ?? 0;
}

function planReport(repo: Repository, state: PackState, plan: GcPlan, points: number, refs: number, graceMs: number, threshold: number): GcReport {
  const rewriteDead = plan.rewrite.reduce((n, r) => n + r.pack.entries.filter((e) => !r.keep.includes(e)).reduce((m, e) => m + e.length + 44, 0), 0);
  return {
    repository: repo.backend.location,
    dryRun: true,
    graceSeconds: Math.round(graceMs / 1000),
    rewriteThresholdPercent: threshold,
    restorePoints: points,
    referencedBlocks: refs,
    packs: {
      total: state.files.size,
      unused: plan.unused.length,
      rewritten: plan.rewrite.length,
      partlyUsedKept: plan.partlyUsedKept,
      orphaned: plan.orphans.length,
      unreadableIndex: state.unreadable.length,
    },
    rewriteSkipped: [],
    condemnedPacks: plan.unused.length + plan.rewrite.length + plan.orphans.length + plan.adopt.length,
    deletedPacks: 0,
    resurrectedPacks: 0,
    pending: { packs: state.batches.reduce((n, b) => n + b.batch.packs.length, 0), waitingFor: [] },
    bytesReclaimed: plan.unused.reduce((n, p) => n + (state.files.has(p.id) ? p.size : 0), 0) + rewriteDead,
    bytesRewritten: 0,
    wasteBytesLeft: plan.wasteBytesLeft,
    uncommittedMapsRemoved: 0,
    temporaryFilesRemoved: 0,
    durationMs: 0,
  };
}

/**
 * Hashes with a good live copy now: in an index object (the ones gc read already, plus any written
 * meanwhile) whose pack file exists and not on the damaged-blocks list. A condemned pack is put back
 * rather than deleted when it holds a needed block that has no such copy.
 */
async function liveHashes(backend: RepositoryBackend, state: PackState): Promise<Set<string>> {
  const keys: string[] = [];
  for await (const key of backend.list('index/')) keys.push(key);
  const files = new Set<string>();
  for await (const key of backend.list('packs/')) files.add(packIdOf(key));
  const damaged = damageIndex(await readDamagedBlocks(backend));
  const out = new Set<string>();
  for (const key of keys) {
    const id = packIdOf(key);
    if (!files.has(id)) continue;
    const entries = state.live.get(id)?.entries ?? decodeIndex(await backend.get(key), key).entries;
    for (const e of entries) {
      const hex = e.hash.toString('hex');
      if (!damaged.get(hex)?.has(id)) out.add(hex);
    }
  }
  return out;
}

/**
 * Maps whose point has no manifest: left by a session killed before its commit, or by a prune killed
 * between the manifest and the maps. Only when older than the grace period and no live lock holds
 * that session; the manifest is checked again right before, since a session may just have committed.
 */
async function removeUncommittedMaps(repo: Repository, graceMs: number): Promise<number> {
  const groups = new Map<string, string[]>();
  const manifests = new Set<string>();
  for await (const k of repo.backend.list('points/')) {
    const m = /^(points\/[^/]+\/[^/]+)\/disk-\d+\.map$/.exec(k);
    if (m) groups.set(m[1], [...(groups.get(m[1]) ?? []), k]);
    else if (k.endsWith('.json')) manifests.add(k);
  }
  const sessions = new Set((await listLocks(repo.backend)).filter((l) => !l.stale).map((l) => l.record?.session));
  let removed = 0;
  for (const [prefix, keys] of groups) {
    const id = prefix.slice(prefix.lastIndexOf('/') + 1);
    const created = pointIdTime(id);
    if (manifests.has(`${prefix}.json`) || sessions.has(id) || created === undefined || Date.now() - created < graceMs) continue;
    if (await repo.backend.has(`${prefix}.json`)) continue;
    for (const k of keys) await repo.backend.delete(k);
    removed += keys.length;
  }
  return removed;
}

/** A key's retain-until date when it has not passed: from its index row or an extension record. */
function retainedAfterNow(repo: Repository, v2: IndexObjectsV2, key: string): Date | undefined {
  const fromIndex = key.startsWith('packs/') ? v2.listed.get(packIdOf(key))?.retainUntil : undefined;
  const fromRecords = repo.retention?.get(key);
  const t = Math.max(fromIndex?.getTime() ?? 0, fromRecords?.getTime() ?? 0);
  return t > Date.now() ? new Date(t) : undefined;
}

/**
 * Format 2 with immutability: gc never deletes or rewrites a pack before its date. Such packs leave
 * the plan (they stay live, untouched); returns how many and until when, for the report.
 */
async function holdRetained(repo: Repository, state: PackState & { v2?: IndexObjectsV2 }, plan: GcPlan): Promise<GcReport['retainedUntil']> {
  if (!state.v2 || !repo.retention) return undefined;
  await repo.retention.load();
  let latest = 0;
  let held = 0;
  const hold = (id: string): boolean => {
    const until = retainedAfterNow(repo, state.v2!, packKey(id));
    if (!until) return false;
    held++;
    latest = Math.max(latest, until.getTime());
    return true;
  };
  plan.unused = plan.unused.filter((p) => !hold(p.id));
  plan.rewrite = plan.rewrite.filter((r) => !hold(r.pack.id));
  return held ? { packs: held, until: new Date(latest).toISOString() } : undefined;
}

function union(a: Set<string>, b: Set<string>): Set<string> {
  for (const x of b) a.add(x);
  return a;
}
