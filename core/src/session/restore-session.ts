import { FerryError } from '../errors.js';
import type { BlockSlot } from '../repository/block-codec.js';
import type { Repository } from '../repository/repository.js';
import { lockForReading } from '../repository/repository-lock.js';
import type { JobRuntime } from './job-runtime.js';
import { openRestoreSink, withTargetState } from './restore-sink.js';
import { restoreRemote } from './remote-restore.js';

export interface RestoreOptions {
  vm: string;
  disk: string;
  /** Restore point id, or `latest`. */
  point: string;
  /** Target file or block device, or a network target a transport can write (`nbd://...`). */
  to: string;
  /**
   * Overwrite a file or block device that exists (`--force`); without it an existing target is
   * refused with RESTORE_TARGET_EXISTS. A network target (NBD export) is always written.
   */
  force?: boolean;
  /** Blocks fetched and written at once (default `RESTORE_CONCURRENCY`). */
  concurrency?: number;
  onProgress?: (doneBytes: number, sizeBytes: number) => void;
}

/**
 * Blocks in flight in a restore: each is read, decoded on a worker thread and written in turn, so a
 * few per worker keep reads, decoding and writes overlapped (4 left both workers idle ~60%).
 */
export const RESTORE_CONCURRENCY = 8;

export interface RestoreReport {
  vm: string;
  disk: string;
  restorePoint: string;
  to: string;
  sizeBytes: number;
  bytesWritten: number;
  zeroBytes: number;
  sparse: boolean;
  durationMs: number;
  /** Restores from a repository service: connections made again after a drop. */
  reconnects?: number;
  /** Restores from a repository service: blocks it sent again after drops (at most its window each). */
  resentBlocks?: number;
}

/**
 * Writes one disk of a restore point to a file, a block device or a transport's target (an NBD
 * export). Every block is checked (CRC-32 of the stored object, SHA-256 of the content against the
 * block map) before it is written; a damaged block stops the restore with its object, disk and
 * offset named. Zero blocks become holes in a regular file, WRITE_ZEROES on a target that has it,
 * and written zeros elsewhere.
 */
export async function restoreDisk(rt: JobRuntime, opts: RestoreOptions): Promise<RestoreReport> {
  // A repository service streams the blocks; this process checks and writes them.
  if (rt.spec.remote) return restoreRemote(rt, rt.spec.remote, opts);
  const repo = await rt.repository({ create: false });
  // A `restore` lock keeps garbage collection from sweeping packs this restore may still read.
  const lock = await lockForReading(repo.backend, { operation: 'restore', vms: [opts.vm], job: rt.spec.job });
  try {
    return await restoreFrom(rt, repo, opts);
  } finally {
    await lock?.release();
  }
}

async function restoreFrom(rt: JobRuntime, repo: Repository, opts: RestoreOptions): Promise<RestoreReport> {
  const t0 = performance.now();
  const { point, disk } = await repo.getPointDisk(opts.vm, opts.point, opts.disk);
  const map = await repo.readMap(disk);
  const codec = await rt.codec();
  const sink = await openRestoreSink(rt, opts.to, map.diskSize, opts.disk, { force: opts.force });
  const report: RestoreReport = {
    vm: opts.vm,
    disk: opts.disk,
    restorePoint: point.id,
    to: sink.label,
    sizeBytes: map.diskSize,
    bytesWritten: 0,
    zeroBytes: 0,
    sparse: sink.sparse,
    durationMs: 0,
  };
  // After one lane fails the others stop at their next block, and all have settled before the sink is
  // finished: no write may land after finish reports what the target holds.
  let failed: { err: unknown } | undefined;
  try {
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      // Each lane decodes into one slot shared with the worker threads, reused for all its blocks.
      const slot = codec.takeSlot(map.blockSize);
      try {
        await lane(slot);
      } finally {
        codec.giveSlot(slot);
      }
    };
    const lane = async (slot: BlockSlot): Promise<void> => {
      while (!failed && next < map.blockCount) {
        const i = next++;
        const offset = i * map.blockSize;
        const length = map.lengthOf(i);
        const hash = map.get(i);
        if (hash) {
          const data = await repo.blocks.read(hash, codec, slot).catch((err) => {
            throw err instanceof FerryError ? err.at({ vm: opts.vm, disk: opts.disk, offset }) : err;
          });
          if (data.length !== length) {
            throw new FerryError('REPO_CORRUPT_OBJECT', `block holds ${data.length} bytes, the map expects ${length}`, {
              vm: opts.vm,
              disk: opts.disk,
              offset,
            });
          }
          await sink.write(offset, data);
          report.bytesWritten += length;
        } else {
          await sink.zero(offset, length);
          report.zeroBytes += length;
        }
        done += length;
        opts.onProgress?.(done, map.diskSize);
      }
    };
    const lanes = Array.from({ length: Math.max(1, opts.concurrency ?? RESTORE_CONCURRENCY) }, () => worker().catch((err) => void (failed ??= { err })));
    await Promise.all(lanes);
    if (failed) throw failed.err;
  } catch (err) {
    throw withTargetState(err, await sink.finish(false).catch(() => undefined));
  }
  await sink.finish(true);
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}
