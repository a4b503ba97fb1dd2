import type { Repository, RestorePoint } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import { applyRetention, type RetentionPolicy } from './retention-policy.js';

export interface PrunedPoint {
  vm: string;
  restorePoint: string;
  createdAt: string;
  /** Set when retention would remove the point but it is inside its immutability period. */
  immutableUntil?: string;
  /** Why it stays (every rule that keeps it) or goes (why no rule keeps it). */
  reasons: string[];
}

export interface PruneReport {
  job: string;
  repository: string;
  dryRun: boolean;
  /** null: the job has no `retention:` key, so every point stays. */
  policy: RetentionPolicy | null;
  kept: PrunedPoint[];
  removed: PrunedPoint[];
  durationMs: number;
  error?: { code: string; message: string; where: object };
}

export interface PruneOptions {
  job: string;
  vms: string[];
  policy: RetentionPolicy | undefined;
  dryRun?: boolean;
}

/**
 * Applies the job's retention to each of its VMs' chains (the points this job made of that VM;
 * points of other jobs are not touched). A point inside the repository's immutability period is
 * kept whatever the policy says, with "immutable until ..." among its reasons. Each removed point goes manifest first, then its maps, so
 * it disappears atomically; its blocks stay until garbage collection. The caller holds a lock that
 * covers the VMs (a `prune` lock, or the backup's own lock after a session).
 */
export async function prunePoints(repo: Repository, opts: PruneOptions): Promise<{ kept: PrunedPoint[]; removed: PrunedPoint[] }> {
  const kept: PrunedPoint[] = [];
  const removed: PrunedPoint[] = [];
  for (const vm of opts.vms) {
    const chain = (await repo.listPoints(vm)).filter((p) => p.job === opts.job);
    const byId = new Map(chain.map((p) => [p.id, p]));
    const decisions = opts.policy
      ? applyRetention(chain, opts.policy)
      : chain.map((p) => ({ ...p, keep: true, reasons: ['the job has no retention policy'] }));
    for (const d of decisions) {
      const entry: PrunedPoint = { vm, restorePoint: d.id, createdAt: d.createdAt, reasons: d.reasons };
      if (d.keep) {
        kept.push(entry);
        continue;
      }
      // Immutability outranks retention: such a point stays until its period has passed.
      const until = repo.immutableUntil(d);
      if (until) {
        kept.push({ ...entry, immutableUntil: until.toISOString(), reasons: [`immutable until ${until.toISOString()}`, ...d.reasons] });
        continue;
      }
      if (!opts.dryRun) await repo.deletePoint(byId.get(d.id) as RestorePoint);
      removed.push(entry);
    }
  }
  return { kept, removed };
}

/** `ferry prune`: takes a `prune` lock on the job's VMs (none for a dry run) and prunes. */
export async function runPrune(repo: Repository, opts: PruneOptions): Promise<PruneReport> {
  const t0 = performance.now();
  const report: PruneReport = {
    job: opts.job,
    repository: repo.backend.location,
    dryRun: Boolean(opts.dryRun),
    policy: opts.policy ?? null,
    kept: [],
    removed: [],
    durationMs: 0,
  };
  const lock = opts.dryRun ? undefined : await RepositoryLock.acquire(repo.backend, { operation: 'prune', vms: opts.vms, job: opts.job });
  try {
    Object.assign(report, await prunePoints(repo, opts));
  } finally {
    await lock?.release();
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}
