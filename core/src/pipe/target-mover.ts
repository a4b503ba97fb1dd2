import { FerryError } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import { parseBlock } from '../repository/block-object.js';
import type { Repository } from '../repository/repository.js';
import { recordBlocks, type BlockRecord, type DiskHeader } from './block-record.js';

export interface TargetCounters {
  bytesWritten: number;
  blocksNew: number;
  blocksDeduped: number;
  blocksZero: number;
  blocksUnchanged: number;
}

/**
 * The target-side data mover: checks each block it receives, deduplicates it against the whole
 * repository, hands new blocks to the repository's pack writer, and builds the disk's block map.
 * One instance serves a session; a block that two disks share is stored once. Backpressure: when
 * the pack uploads are saturated, `add` waits, and so does the pipe behind it.
 */
export class TargetMover {
  /**
   * `trustedSource`: the records come from a source mover in this process (the embedded pipe), which
   * framed each block a moment before; re-checking its CRC-32 on the main thread then guards against
   * nothing a network would do and costs ~0.3 s per GiB. A pipe that crossed a network keeps it.
   */
  constructor(
    private readonly repo: Repository,
    private readonly opts: { trustedSource?: boolean } = {},
  ) {}

  /** `base`: the previous point's map of this disk, for `unchanged` records of an incremental run. */
  async receiveDisk(header: DiskHeader, records: AsyncIterable<BlockRecord>, counters: TargetCounters, base?: BlockMap): Promise<BlockMap> {
    const map = new BlockMap(header.sizeBytes, header.blockSize);
    await this.repo.blocks.load();
    for await (const rec of records) {
      // A run (`count`) stands for its blocks in one step; its length is theirs together.
      const n = recordBlocks(rec);
      if (!Number.isInteger(n) || n < 1 || rec.index + n > map.blockCount || rec.length !== map.lengthOf(rec.index, n)) {
        const what = n === 1 ? `block ${rec.index}` : `blocks ${rec.index}-${rec.index + n - 1}`;
        throw new FerryError('INTERNAL', `${what} ${n === 1 ? 'does' : 'do'} not fit the disk`, { vm: header.vm, disk: header.disk });
      }
      if (rec.kind === 'zero') {
        map.setZero(rec.index, n);
        counters.blocksZero += n;
      } else if (rec.kind === 'unchanged') {
        if (!base || base.blockSize !== map.blockSize || base.diskSize !== map.diskSize) {
          throw new FerryError('INTERNAL', `block ${rec.index} is unchanged but there is no matching base map`, { vm: header.vm, disk: header.disk });
        }
        map.copyEntry(base, rec.index, n);
        counters.blocksUnchanged += n;
      } else if (rec.kind === 'known') {
        if (!(await this.repo.blocks.has(rec.hash))) {
          throw new FerryError('REPO_OBJECT_NOT_FOUND', `block ${rec.hash.toString('hex')} was reported stored but is not`, {
            vm: header.vm,
            disk: header.disk,
            offset: rec.index * header.blockSize,
          });
        }
        map.set(rec.index, rec.hash);
        counters.blocksDeduped++;
      } else {
        if (!this.opts.trustedSource) this.check(header, rec.index, rec.encoded, rec.length);
        map.set(rec.index, rec.hash);
        if (this.repo.blocks.reserve(rec.hash)) {
          // Read before `add`: a lent record's memory is reused once the next record is asked for.
          const size = rec.encoded.length;
          await this.repo.blocks.add(rec.hash, rec.encoded);
          counters.blocksNew++;
          counters.bytesWritten += size;
        } else {
          counters.blocksDeduped++;
        }
      }
    }
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
}
