import { FerryError } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import { parseBlock } from '../repository/block-object.js';
import { Repository } from '../repository/repository.js';
import type { StageMeters } from '../session/stage-meter.js';
import type { BlockRecord, DiskHeader } from './block-record.js';

export interface TargetCounters {
  bytesWritten: number;
  blocksNew: number;
  blocksDeduped: number;
  blocksZero: number;
  blocksUnchanged: number;
}

/**
 * The target-side data mover: checks each block it receives, deduplicates it against the whole
 * repository, writes new blocks, and builds the disk's block map. One instance serves a session, so
 * a block that two disks share is written once even while both are in flight.
 */
export class TargetMover {
  /** Blocks being written now, by hash: a second sighting waits for the first write. */
  private readonly pending = new Map<string, Promise<void>>();

  constructor(
    private readonly repo: Repository,
    private readonly meters: StageMeters,
    private readonly writeConcurrency = 4,
  ) {}

  /** `base`: the previous point's map of this disk, for `unchanged` records of an incremental run. */
  async receiveDisk(header: DiskHeader, records: AsyncIterable<BlockRecord>, counters: TargetCounters, base?: BlockMap): Promise<BlockMap> {
    const map = new BlockMap(header.sizeBytes, header.blockSize);
    const inflight = new Set<Promise<void>>();
    let failure: unknown;
    for await (const rec of records) {
      if (failure) break;
      if (rec.index >= map.blockCount || rec.length !== map.lengthOf(rec.index)) {
        throw new FerryError('INTERNAL', `block ${rec.index} does not fit the disk`, { vm: header.vm, disk: header.disk });
      }
      if (rec.kind === 'zero') {
        map.setZero(rec.index);
        counters.blocksZero++;
        continue;
      }
      if (rec.kind === 'unchanged') {
        if (!base || base.blockSize !== map.blockSize || base.diskSize !== map.diskSize) {
          throw new FerryError('INTERNAL', `block ${rec.index} is unchanged but there is no matching base map`, { vm: header.vm, disk: header.disk });
        }
        map.copyEntry(base, rec.index);
        counters.blocksUnchanged++;
        continue;
      }
      this.check(header, rec.index, rec.encoded, rec.length);
      map.set(rec.index, rec.hash);
      const p = this.store(rec.hash, rec.encoded, counters).catch((err) => {
        failure ??= err;
      });
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
      if (inflight.size >= this.writeConcurrency) await Promise.race(inflight);
    }
    await Promise.all(inflight);
    if (failure) throw failure;
    return map;
  }

  /** The pipe carries blocks with their CRC-32: a damaged one is refused before it is stored. */
  private check(header: DiskHeader, index: number, encoded: Buffer, length: number): void {
    const where = { vm: header.vm, disk: header.disk, offset: index * header.blockSize };
    try {
      const h = parseBlock(encoded, `block ${index}`);
      if (h.rawLength !== length) throw new Error(`raw length ${h.rawLength}, expected ${length}`);
    } catch (err) {
      throw new FerryError('REPO_CORRUPT_OBJECT', `block arrived damaged: ${(err as Error).message}`, where, { cause: err });
    }
  }

  private async store(hash: Buffer, encoded: Buffer, counters: TargetCounters): Promise<void> {
    const hex = hash.toString('hex');
    const pending = this.pending.get(hex);
    if (pending) {
      await pending;
      counters.blocksDeduped++;
      return;
    }
    const work = this.meters['target write'].time(async () => {
      if (await this.repo.hasBlock(hash)) {
        counters.blocksDeduped++;
        return;
      }
      await this.repo.putBlock(hash, encoded);
      counters.blocksNew++;
      counters.bytesWritten += encoded.length;
    });
    this.pending.set(hex, work);
    try {
      await work;
    } finally {
      this.pending.delete(hex);
    }
  }
}
