import { FerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import type { Repository } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import type { JobRuntime } from './job-runtime.js';
import type { RepositoryRuntime } from './repository-runtime.js';
import type { ReportedError } from '../errors.js';
import type { CopyOutcome, RetentionOutcome, SessionReport, VerifyOutcome } from '../report/session-report.js';

export type { CopyOutcome, RetentionOutcome, VerifyOutcome };

// Retention, the health check and copies load their modules when a job asks for them: most
// sessions do none of them, and a copy's repository file needs Ajv and yaml.

/**
 * What a backup session does around moving data, kept out of `backup-session.ts`: the lock on the
 * job's VM chains, retention after success and the optional health check. (The blocks an
 * incremental run reads again to heal them are part of the disk plan, `../plan/disk-plan.ts`.)
 */

/** The session's lock: its VMs' chains, held from before the index is loaded until the end. */
export function lockSession(repo: Repository, rt: JobRuntime, session: string): Promise<RepositoryLock> {
  return RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: rt.spec.source.vms.map((v) => v.name), job: rt.spec.job, session });
}

/** Retention of the VMs that got a point, under the session's lock; a failure is reported, not thrown. */
export async function retentionAfterSession(rt: JobRuntime, repo: Repository, lock: RepositoryLock, report: SessionReport): Promise<RetentionOutcome | undefined> {
  if (!rt.spec.retention) return undefined;
  const vms = report.vms.filter((v) => v.status === 'success' && v.restorePoint).map((v) => v.vm);
  try {
    await lock.assertHeld();
    const { prunePoints } = await import('../maintenance/prune.js');
    return { removed: (await prunePoints(repo, { job: rt.spec.job, vms, policy: rt.spec.retention })).removed };
  } catch (err) {
    return { removed: [], error: summary(err) };
  }
}

/** `verify: { afterBackup: true }`: checks the points this session committed (after the lock is released). */
export async function verifyAfterSession(rt: JobRuntime, repo: Repository, codec: BlockCodec, report: SessionReport): Promise<VerifyOutcome | undefined> {
  if (!rt.spec.verify.afterBackup) return undefined;
  const points = report.vms.filter((v) => v.restorePoint).map((v) => ({ vm: v.vm, id: v.restorePoint! }));
  const samplePercent = rt.spec.verify.samplePercent;
  if (points.length === 0) return { status: 'not run', samplePercent, blocksChecked: 0, damagedBlocks: 0, throughputMiBps: 0 };
  try {
    const { runVerify } = await import('../maintenance/verify.js');
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
 * `copyTo:`: copies the points this session committed to each repository file, one after another
 * (`copyPoints`; the target is created when its location is empty). A failure is reported per
 * target, not thrown: the backup itself succeeded.
 */
export async function copyAfterSession(rt: JobRuntime, repo: Repository, codec: BlockCodec, report: SessionReport): Promise<CopyOutcome[] | undefined> {
  if (!rt.spec.copyTo?.length) return undefined;
  const points = report.vms.filter((v) => v.restorePoint).map((v) => ({ vm: v.vm, id: v.restorePoint! }));
  const out: CopyOutcome[] = [];
  const [{ copyPoints }, { RepositoryRuntime }] = await Promise.all([import('../maintenance/copy.js'), import('./repository-runtime.js')]);
  for (const file of rt.spec.copyTo) {
    if (points.length === 0) {
      out.push({ to: file, points: 0, blocksTransferred: 0, bytesTransferred: 0 });
      continue;
    }
    let target: RepositoryRuntime | undefined;
    try {
      target = await RepositoryRuntime.open(file);
      const dst = await target.repository({ create: true });
      const r = await copyPoints(repo, codec, dst, await target.codec(), { points, compressor: rt.spec.storage.compressor, job: rt.spec.job });
      out.push({ to: r.to, points: r.points.filter((p) => p.status === 'copied').length, blocksTransferred: r.blocks.transferred, bytesTransferred: r.bytesTransferred });
    } catch (err) {
      out.push({ to: file, points: 0, blocksTransferred: 0, bytesTransferred: 0, error: summary(err) });
    } finally {
      await target?.close().catch(() => undefined);
    }
  }
  return out;
}

function summary(err: unknown): ReportedError {
  if (err instanceof FerryError) return { code: err.code, message: err.message, where: err.where };
  return { code: 'INTERNAL', message: err instanceof Error ? err.message : String(err), where: {} };
}
