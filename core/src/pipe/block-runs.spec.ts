import { expect } from 'chai';
import type { AllocationExtent, Extent } from '../contracts/extent.js';
import type { DiskHandle } from '../contracts/transport.js';
import { ZeroBlockFilter } from '../filters/zero-block-filter.js';
import { BlockMap } from '../repository/block-map.js';
import { Repository } from '../repository/repository.js';
import { createPluginHost } from '../session/job-runtime.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { recordBlocks, type BlockRecord } from './block-record.js';
import { newStageMeters } from './stage-meter.js';
import { skipRangeFilter, SourceMover, type ChangedRanges, type SourceCounters } from './source-mover.js';
import { TargetMover, type TargetCounters } from './target-mover.js';
import { WorkerBlockCodec } from './worker-block-codec.js';

const BLOCK = 64 * 1024;
/** 40 whole blocks and a short 41st. */
const SIZE = 40 * BLOCK + 1000;

/**
 * A disk in memory with a known layout (blocks of 64 KiB):
 *   0-1 data · 2-3 allocated zeros (read) · 4-11 hole, reported as three extents · 12 half hole,
 *   half data · 13-15 hole (15 in a skip range) · 16 data · 17 allocated zeros · 18-19 hole ·
 *   20-29 data · 30-40 hole up to the disk's end (40 is short).
 * Block status answers at most `perReply` extents per call, as a transport may.
 */
function runDisk(perReply = 2): { handle: DiskHandle; statusCalls: () => number } {
  const bytes = Buffer.alloc(SIZE);
  const rng = new Prng(3);
  const extents: AllocationExtent[] = [];
  const add = (from: number, to: number, kind: 'data' | 'zero'): void => {
    extents.push({ offset: from, length: to - from, kind });
    if (kind === 'data') rng.fill(bytes.subarray(from, to));
  };
  add(0, 2 * BLOCK, 'data');
  extents.push({ offset: 2 * BLOCK, length: 2 * BLOCK, kind: 'data' }); // allocated, all zeros
  add(4 * BLOCK, 6 * BLOCK, 'zero');
  add(6 * BLOCK, 9 * BLOCK, 'zero');
  add(9 * BLOCK, 12 * BLOCK + BLOCK / 2, 'zero');
  add(12 * BLOCK + BLOCK / 2, 13 * BLOCK, 'data');
  add(13 * BLOCK, 16 * BLOCK, 'zero');
  add(16 * BLOCK, 17 * BLOCK, 'data');
  extents.push({ offset: 17 * BLOCK, length: BLOCK, kind: 'data' }); // allocated, all zeros
  add(18 * BLOCK, 20 * BLOCK, 'zero');
  add(20 * BLOCK, 30 * BLOCK, 'data');
  add(30 * BLOCK, SIZE, 'zero');
  let calls = 0;
  const handle: DiskHandle = {
    size: SIZE,
    read: async (o, l) => Buffer.from(bytes.subarray(o, o + l)),
    readInto: async (o, into) => void into.set(bytes.subarray(o, o + into.length)),
    blockStatus: async (o, l) => {
      calls++;
      const out: AllocationExtent[] = [];
      for (const e of extents) {
        const s = Math.max(o, e.offset);
        const t = Math.min(o + l, e.offset + e.length);
        if (s < t && out.length < perReply) out.push({ offset: s, length: t - s, kind: e.kind });
      }
      return out;
    },
    close: async () => undefined,
  };
  return { handle, statusCalls: () => calls };
}

/** One record per block, as a run stands for them. */
function expand(records: BlockRecord[]): BlockRecord[] {
  const out: BlockRecord[] = [];
  for (const r of records) {
    const n = recordBlocks(r);
    for (let k = 0; k < n; k++) {
      const length = Math.min(BLOCK, SIZE - (r.index + k) * BLOCK);
      if (r.kind === 'zero') out.push({ kind: 'zero', index: r.index + k, length, read: r.read });
      else if (r.kind === 'unchanged') out.push({ kind: 'unchanged', index: r.index + k, length });
      else out.push(r);
    }
  }
  return out;
}

/** A record's shape without its buffers (the per-block comparison). */
const shape = (r: BlockRecord): string => `${r.kind} ${r.index} ${r.length}${r.kind === 'zero' ? ` read=${r.read}` : ''}${'count' in r && r.count !== undefined ? ` x${r.count}` : ''}${r.kind === 'data' || r.kind === 'known' ? ` ${r.hash.toString('hex').slice(0, 12)}` : ''}`;

describe('block runs: zero and unchanged blocks as one record', function () {
  this.timeout(60_000);
  let codec: WorkerBlockCodec;
  before(async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 1);
  });
  after(() => codec?.close());

  async function move(runs: boolean, opts: { skip?: Extent[]; changed?: ChangedRanges; perReply?: number; from?: number } = {}): Promise<{ records: BlockRecord[]; counters: SourceCounters; statusCalls: number }> {
    const { handle, statusCalls } = runDisk(opts.perReply);
    const filters = [
      { name: 'zero', impl: new ZeroBlockFilter() },
      { name: 'swap', impl: { skipExtents: async () => [] } },
    ];
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'none', level: 0 }, codec, filters, readAhead: 4, runs }, newStageMeters());
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    const records: BlockRecord[] = [];
    for await (const r of mover.blocks(handle, opts.skip ?? [], counters, opts.changed, opts.from)) records.push(r);
    return { records, counters, statusCalls: statusCalls() };
  }

  function swapRange(): Extent[] {
    const skip = [{ offset: 15 * BLOCK, length: BLOCK }];
    skipRangeFilter.set(skip[0]!, 'swap');
    return skip;
  }

  it('joins holes across block-status extents and replies, zero blocks, and skipped blocks; the run at the end takes the short last block', async function () {
    const { records } = await move(true, { skip: swapRange() });
    const runs = records.filter((r) => r.kind === 'zero').map((r) => [r.index, recordBlocks(r), r.length, (r as { read: boolean }).read]);
    expect(runs).to.deep.equal([
      [2, 2, 2 * BLOCK, true], // all-zero blocks read and dropped by the zero filter
      [4, 8, 8 * BLOCK, false], // a hole of three extents, in replies of two
      [13, 3, 3 * BLOCK, false], // a hole, then a block wholly in a skip range
      [17, 1, BLOCK, true],
      [18, 2, 2 * BLOCK, false], // read and unread zero blocks stay apart
      [30, 11, 10 * BLOCK + 1000, false], // up to the disk's end
    ]);
    expect(records.map((r) => r.index)).to.deep.equal([0, 1, 2, 4, 12, 13, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]);
  });

  it('stands for exactly the records and counters of one record per block', async function () {
    for (const perReply of [1, 2, 100]) {
      const per = await move(false, { skip: swapRange(), perReply });
      const run = await move(true, { skip: swapRange(), perReply });
      expect(per.records.every((r) => !('count' in r)), 'runs off: no counts').to.equal(true);
      expect(expand(run.records).map(shape), `${perReply} extents per reply`).to.deep.equal(per.records.map(shape));
      expect(run.counters).to.deep.equal(per.counters);
      expect(run.counters.filtered).to.deep.equal({ zero: 3, swap: 1 });
    }
  });

  it('a resumed disk starts its first run at the block asked for', async function () {
    const per = await move(false, { from: 7 });
    const run = await move(true, { from: 7 });
    expect(run.records[0]).to.deep.include({ kind: 'zero', index: 7, count: 5, length: 5 * BLOCK });
    expect(expand(run.records).map(shape)).to.deep.equal(per.records.map(shape));
  });

  it('a disk without block status has no holes: zero blocks are read and joined', async function () {
    const { handle } = runDisk();
    delete handle.blockStatus;
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'none', level: 0 }, codec, filters: [{ name: 'zero', impl: new ZeroBlockFilter() }], readAhead: 4, runs: true }, newStageMeters());
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    const zero: [number, number, boolean][] = [];
    for await (const r of mover.blocks(handle, [], counters)) if (r.kind === 'zero') zero.push([r.index, recordBlocks(r), r.read]);
    expect(zero).to.deep.equal([
      [2, 10, true],
      [13, 3, true],
      [17, 3, true],
      [30, 11, true],
    ]);
    expect(counters.bytesRead).to.equal(SIZE);
  });

  it('incremental: the blocks no changed range touches are unchanged runs, from a list or from queries', async function () {
    const changes = [
      { offset: 5 * BLOCK + 100, length: 10 },
      { offset: 20 * BLOCK, length: 2 * BLOCK },
      { offset: 39 * BLOCK - 1, length: 1 },
    ];
    // A transport may answer in any order.
    const query = async (offset: number, length: number): Promise<Extent[]> =>
      changes
        .filter((e) => e.offset < offset + length && e.offset + e.length > offset)
        .map((e) => ({ offset: Math.max(offset, e.offset), length: Math.min(offset + length, e.offset + e.length) - Math.max(offset, e.offset) }))
        .reverse();
    for (const changed of [{ extents: changes }, { query }] as ChangedRanges[]) {
      const per = await move(false, { changed });
      const run = await move(true, { changed });
      const unchanged = run.records.filter((r) => r.kind === 'unchanged').map((r) => [r.index, recordBlocks(r), r.length]);
      expect(unchanged).to.deep.equal([
        [0, 5, 5 * BLOCK],
        [6, 14, 14 * BLOCK],
        [22, 16, 16 * BLOCK],
        [39, 2, BLOCK + 1000],
      ]);
      expect(expand(run.records).map(shape)).to.deep.equal(per.records.map(shape));
      expect(run.counters).to.deep.equal(per.counters);
    }
  });

  it('the target mover builds the same block map and counts from runs as from one record per block', async function () {
    const base = new BlockMap(SIZE, BLOCK);
    for (let i = 0; i < base.blockCount; i++) base.set(i, Buffer.alloc(32, i + 1));
    const header = { vm: 'vm', disk: 'd', sizeBytes: SIZE, blockSize: BLOCK };
    const receive = async (records: BlockRecord[], incremental: boolean): Promise<{ map: BlockMap; counters: TargetCounters }> => {
      const repo = await Repository.open(new MemoryBackend(), { create: true });
      const counters: TargetCounters = { bytesWritten: 0, blocksNew: 0, blocksDeduped: 0, blocksZero: 0, blocksUnchanged: 0 };
      const map = await new TargetMover(repo, { trustedSource: true }).receiveDisk(header, iterate(records), counters, incremental ? base : undefined);
      await repo.blocks.flush();
      return { map, counters };
    };
    const changed: ChangedRanges = { extents: [{ offset: 3 * BLOCK, length: 10 * BLOCK }] };
    for (const opts of [{ skip: swapRange() }, { changed }]) {
      const per = await receive((await move(false, opts)).records, 'changed' in opts);
      const run = await receive((await move(true, opts)).records, 'changed' in opts);
      expect(run.map.entries.equals(per.map.entries)).to.equal(true);
      expect(run.counters).to.deep.equal(per.counters);
      expect(per.counters.blocksZero + per.counters.blocksUnchanged).to.be.greaterThan(10);
    }
  });

  it('the target mover refuses a run that does not fit the disk', async function () {
    const repo = await Repository.open(new MemoryBackend(), { create: true });
    const header = { vm: 'vm', disk: 'd', sizeBytes: SIZE, blockSize: BLOCK };
    const counters: TargetCounters = { bytesWritten: 0, blocksNew: 0, blocksDeduped: 0, blocksZero: 0, blocksUnchanged: 0 };
    for (const bad of [
      { kind: 'zero', index: 38, count: 4, length: 3 * BLOCK + 1000, read: false },
      { kind: 'zero', index: 30, count: 11, length: 11 * BLOCK, read: false },
      { kind: 'zero', index: 3, count: 0, length: 0, read: false },
    ] as BlockRecord[]) {
      const err = await new TargetMover(repo).receiveDisk(header, iterate([bad]), counters).then(
        () => undefined,
        (e: { code?: string; message: string }) => e,
      );
      expect(err?.message, JSON.stringify(bad)).to.match(/do(es)? not fit the disk/);
    }
  });
});

async function* iterate<T>(items: T[]): AsyncGenerator<T> {
  for (const x of items) yield x;
}
