import type { Extent } from '../contracts/extent.js';
import { FerryError } from '../errors.js';
import { prunePoints, type PrunedPoint } from '../maintenance/prune.js';
import { runVerify } from '../maintenance/verify.js';
import type { BlockCodec } from '../pipe/block-codec.js';
import type { ChangedRanges } from '../pipe/source-mover.js';
import type { BlockMap } from '../repository/block-map.js';
import type { BlockStore } from '../repository/block-store.js';
import type { Repository } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import type { JobRuntime } from './job-runtime.js';
import type { ReportedError, SessionReport } from './session-report.js';

/**
 * What a backup session does around moving data, kept out of `backup-session.ts`: the lock on the
 * job's VM chains, retention after success, the optional health check, and the blocks an
 * incremental run must read again to heal them.
 */

/** The session's lock: its VMs' chains, held from before the index is loaded until the end. */
export function lockSession(repo: Repository, rt: JobRuntime, session: string): Promise<RepositoryLock> {
  return RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: rt.spec.source.vms.map((v) => v.name), job: rt.spec.job, session });
}

export interface RetentionOutcome {
  removed: PrunedPoint[];
  error?: ReportedError;
}

/** Retention of the VMs that got a point, under the session's lock; a failure is reported, not thrown. */
export async function retentionAfterSession(rt: JobRuntime, repo: Repository, lock: RepositoryLock, report: SessionReport): Promise<RetentionOutcome | undefined> {
  if (!rt.spec.retention) return undefined;
  const vms = report.vms.filter((v) => v.status === 'success' && v.restorePoint).map((v) => v.vm);
  try {
    await lock.assertHeld();
    return { removed: (await prunePoints(repo, { job: rt.spec.job, vms, policy: rt.spec.retention })).removed };
  } catch (err) {
    return { removed: [], error: summary(err) };
  }
}

export interface VerifyOutcome {
  status: 'ok' | 'damaged' | 'not run';
  samplePercent: number;
  blocksChecked: number;
  damagedBlocks: number;
  throughputMiBps: number;
  error?: ReportedError;
}

/** `verify: { afterBackup: true }`: checks the points this session committed (after the lock is released). */
export async function verifyAfterSession(rt: JobRuntime, repo: Repository, codec: BlockCodec, report: SessionReport): Promise<VerifyOutcome | undefined> {
  if (!rt.spec.verify.afterBackup) return undefined;
  const points = report.vms.filter((v) => v.restorePoint).map((v) => ({ vm: v.vm, id: v.restorePoint! }));
  const samplePercent = rt.spec.verify.samplePercent;
  if (points.length === 0) return { status: 'not run', samplePercent, blocksChecked: 0, damagedBlocks: 0, throughputMiBps: 0 };
  try {
    const v = await runVerify(repo, codec, { points, samplePercent });
    const out: VerifyOutcome = {
      status: v.status,
      samplePercent,
      blocksChecked: v.blocks.checked,
      damagedBlocks: v.damagedBlocks.length,
      throughputMiBps: v.throughputMiBps,
    };
    if (v.error) out.error = v.error;
    return out;
  } catch (err) {
    return { status: 'not run', samplePercent, blocksChecked: 0, damagedBlocks: 0, throughputMiBps: 0, error: summary(err) };
  }
}

/**
 * Self-heal on incremental runs: blocks of the base map that have no undamaged stored copy are read
 * again even though changed-block tracking says they did not change, so the session stores them anew.
 */
export async function healingRanges(blocks: BlockStore, base: BlockMap, changed: ChangedRanges): Promise<{ changed: ChangedRanges; count: number }> {
  await blocks.load();
  const heal: Extent[] = [];
  for (let i = 0; i < base.blockCount; i++) {
    const hash = base.get(i);
    if (hash && blocks.needsHeal(hash)) heal.push({ offset: i * base.blockSize, length: base.lengthOf(i) });
  }
  if (heal.length === 0) return { changed, count: 0 };
  if ('extents' in changed) return { changed: { extents: [...changed.extents, ...heal].sort((a, b) => a.offset - b.offset) }, count: heal.length };
  const query = async (offset: number, length: number): Promise<Extent[]> => {
    const inside = heal.filter((e) => e.offset < offset + length && e.offset + e.length > offset);
    const clipped = inside.map((e) => {
      const start = Math.max(offset, e.offset);
      return { offset: start, length: Math.min(offset + length, e.offset + e.length) - start };
    });
    return [...(await changed.query(offset, length)), ...clipped].sort((a, b) => a.offset - b.offset);
  };
  return { changed: { query }, count: heal.length };
}

function summary(err: unknown): ReportedError {
  if (err instanceof FerryError) return { code: err.code, message: err.message, where: err.where };
  return { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err), where: {} };
}
