import { FerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import type { Repository, RestorePoint } from '../repository/repository.js';
import { lockForReading, type RepositoryLock } from '../repository/repository-lock.js';
import type { JobRuntime } from '../session/job-runtime.js';
import { PointReader, type BlockSource, type PointReaderOptions } from './point-reader.js';
import { openRemotePointAccess } from './remote-point-access.js';

/**
 * One restore point of one VM opened for random access: its disks are opened as `PointReader`s
 * (each with its own cache) and share what the access holds: in this process the repository, its
 * block codec (worker threads) and a `restore` lock that keeps garbage collection from deleting
 * packs while the point is read; against a repository service (`repository.server` in the job) one
 * control connection. `close` closes every reader and releases the lock.
 */
export interface PointAccess {
  readonly point: RestorePoint;
  /** A disk of the point (RESTORE_NOT_FOUND naming the point's disks when it has no such disk). */
  openDisk(disk: string, opts?: PointReaderOptions): Promise<PointReader>;
  close(): Promise<void>;
}

export interface PointSelection {
  vm: string;
  /** Restore point id, or `latest`. */
  point: string;
}

/** Opens a point of the job's repository (embedded) or of its repository service. */
export function openPointAccess(rt: JobRuntime, sel: PointSelection): Promise<PointAccess> {
  return rt.spec.remote ? openRemotePointAccess(rt, rt.spec.remote, sel) : EmbeddedPointAccess.open(rt, sel);
}

/** One disk of a point: `openPointAccess` + `openDisk`; closing the reader closes the access. */
export async function openPointReader(rt: JobRuntime, sel: PointSelection & { disk: string }, opts?: PointReaderOptions): Promise<PointReader> {
  const access = await openPointAccess(rt, sel);
  try {
    const reader = await access.openDisk(sel.disk, opts);
    const closeReader = reader.close.bind(reader);
    reader.close = async () => {
      await closeReader();
      await access.close();
    };
    return reader;
  } catch (err) {
    await access.close();
    throw err;
  }
}

/** `diskName` of `point`, or RESTORE_NOT_FOUND listing the point's disks. */
export function pointDisk(point: RestorePoint, diskName: string): RestorePoint['disks'][number] {
  const disk = point.disks.find((d) => d.name === diskName);
  if (!disk) {
    throw new FerryError('RESTORE_NOT_FOUND', `restore point ${point.id} of vm ${point.vm} has no disk "${diskName}"; its disks: ${point.disks.map((d) => d.name).join(', ')}`, {
      vm: point.vm,
      disk: diskName,
    });
  }
  return disk;
}

class EmbeddedPointAccess implements PointAccess {
  private readonly readers = new Set<PointReader>();

  private constructor(
    readonly point: RestorePoint,
    private readonly repo: Repository,
    private readonly codec: BlockCodec,
    private readonly lock: RepositoryLock | undefined,
  ) {}

  static async open(rt: JobRuntime, sel: PointSelection): Promise<EmbeddedPointAccess> {
    const repo = await rt.repository({ create: false });
    const lock = await lockForReading(repo.backend, { operation: 'restore', vms: [sel.vm], job: rt.spec.job });
    try {
      const point = await repo.getPoint(sel.vm, sel.point);
      await repo.blocks.load();
      return new EmbeddedPointAccess(point, repo, await rt.codec(), lock);
    } catch (err) {
      await lock?.release().catch(() => undefined);
      throw err;
    }
  }

  async openDisk(diskName: string, opts?: PointReaderOptions): Promise<PointReader> {
    const map = await this.repo.readMap(pointDisk(this.point, diskName));
    const source: BlockSource = {
      read: (hash, where) =>
        this.repo.blocks.read(hash, this.codec).catch((err) => {
          throw err instanceof FerryError ? err.at(where) : err;
        }),
      close: async () => void this.readers.delete(reader),
    };
    const reader = new PointReader({ vm: this.point.vm, disk: diskName, id: this.point.id }, map, source, opts);
    this.readers.add(reader);
    return reader;
  }

  async close(): Promise<void> {
    await Promise.all([...this.readers].map((r) => r.close()));
    await this.lock?.release().catch(() => undefined);
  }
}
