import { FerryError } from '../errors.js';
import { Repository } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';

export interface ForgetOptions {
  vm: string;
  /** The restore point's id (`latest` is refused: forgetting is always about one named point). */
  point: string;
  /** The job asking, recorded in the lock. */
  job?: string;
}

export interface ForgetReport {
  repository: string;
  vm: string;
  restorePoint: string;
  /** `damaged`: the manifest could not be read; its folder's block maps went with it. */
  status: 'ok' | 'damaged';
  /** Keys deleted: the manifest first, then the block maps. */
  removed: string[];
  durationMs: number;
}

/**
 * `ferry forget`: removes one restore point on purpose, under a `forget` lock on its VM (it excludes
 * backups and prunes of that VM and gc). A damaged point (its manifest unreadable) can be forgotten
 * too. Immutability applies: a point inside its period is REPO_IMMUTABLE and nothing is deleted.
 * Its blocks stay until `ferry gc` finds nothing else needs them.
 */
export async function forgetPoint(repo: Repository, opts: ForgetOptions): Promise<ForgetReport> {
  const t0 = performance.now();
  if (opts.point === 'latest') {
    throw new FerryError('CLI_USAGE', 'forget needs a restore point id, not "latest" (see `ferry list`)', { vm: opts.vm });
  }
  const lock = await RepositoryLock.acquire(repo.backend, { operation: 'forget', vms: [opts.vm], job: opts.job });
  try {
    const { points, damaged } = await repo.listPointsChecked(opts.vm);
    const good = points.find((p) => p.id === opts.point);
    const bad = damaged.find((p) => p.id === opts.point);
    if (!good && !bad) {
      const ids = [...points, ...damaged].map((p) => p.id);
      throw new FerryError(
        'REPO_POINT_NOT_FOUND',
        `no restore point "${opts.point}" for vm ${opts.vm}; ${ids.length ? `available: ${ids.join(', ')}` : 'the VM has no restore points'}`,
        { vm: opts.vm },
      );
    }
    await lock.assertHeld();
    const removed = await repo.deletePoint(good ?? { vm: opts.vm, id: opts.point });
    return {
      repository: repo.backend.location,
      vm: opts.vm,
      restorePoint: opts.point,
      status: good ? 'ok' : 'damaged',
      removed,
      durationMs: Math.round(performance.now() - t0),
    };
  } finally {
    await lock.release();
  }
}
