import { FerryError } from '../errors.js';
import type { BlockCodec, BlockSlot } from '../repository/block-codec.js';
import type { Repository } from '../repository/repository.js';
import { lockForReading, type RepositoryLock } from '../repository/repository-lock.js';
import type { JobRuntime } from './job-runtime.js';
import type { RestoreFigures, RestoreSource, RestoreTarget } from './restore-placement.js';
import type { RestoreOptions } from './restore-session.js';

/** Blocks in flight in an embedded restore (`RestoreOptions.concurrency`). */
export const RESTORE_CONCURRENCY = 8;

/**
 * The job's repository read in this process: blocks are read, decoded on the worker threads and
 * handed to the target by a few lanes at once, each decoding into one reused slot.
 */
export class EmbeddedRestore implements RestoreSource {
  private lock?: RepositoryLock;

  constructor(
    private readonly rt: JobRuntime,
    private readonly opts: RestoreOptions,
  ) {}

  async run(target: RestoreTarget): Promise<RestoreFigures> {
    const { opts } = this;
    const repo = await this.rt.repository({ create: false });
    // A `restore` lock keeps garbage collection from sweeping packs this restore may still read.
    this.lock = await lockForReading(repo.backend, { operation: 'restore', vms: [opts.vm], job: this.rt.spec.job });
    const { point, disk } = await repo.getPointDisk(opts.vm, opts.point, opts.disk);
    const map = await repo.readMap(disk);
    const codec = await this.rt.codec();
    // What the map holds tells the codec how much work comes: a small disk stays on this thread;
    // for a large one the threads start as the lanes' tasks arrive (at most one per lane in flight,
    // not one per core of a large machine).
    let dataBytes = 0;
    for (let i = 0; i < map.blockCount; i++) if (map.get(i)) dataBytes += map.lengthOf(i);
    codec.expectWork?.(dataBytes);
    await target.open(point.id, map);
    // After one lane fails the others stop at their next block, and all have settled before the
    // target is finished: no write may land after finish reports what the target holds.
    let failed: { err: unknown } | undefined;
    let next = 0;
    const lane = async (slot: BlockSlot): Promise<void> => {
      while (!failed && next < map.blockCount) {
        const i = next++;
        const hash = map.get(i);
        if (!hash) continue;
        const data = await readBlock(repo, hash, codec, slot, { vm: opts.vm, disk: opts.disk, offset: i * map.blockSize });
        await target.write(i, data);
      }
    };
    const worker = async (): Promise<void> => {
      // Page-aligned: a file target writes the decoded block with O_DIRECT (`fileSink`).
      const slot = codec.takeSlot(map.blockSize, { aligned: true });
      try {
        await lane(slot);
      } finally {
        codec.giveSlot(slot);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? RESTORE_CONCURRENCY) }, () => worker().catch((err) => void (failed ??= { err }))));
    if (failed) throw failed.err;
    return {};
  }

  async close(): Promise<void> {
    await this.lock?.release().catch(() => undefined);
  }
}

function readBlock(repo: Repository, hash: Buffer, codec: BlockCodec, slot: BlockSlot, where: { vm: string; disk: string; offset: number }): Promise<Uint8Array> {
  return repo.blocks.read(hash, codec, slot).catch((err) => {
    throw err instanceof FerryError ? err.at(where) : err;
  });
}
