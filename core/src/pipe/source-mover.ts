import type { BlockFilter } from '../contracts/block-filter.js';
import type { AllocationExtent, Extent } from '../contracts/extent.js';
import type { DiskHandle } from '../contracts/transport.js';
import { FerryError } from '../errors.js';
import { zeroCheckFilters, zeroRange } from '../util/zero.js';
import type { StageMeters } from './stage-meter.js';
import type { BlockCodec, BlockSlot, SlotRead, SlotWork } from '../repository/block-codec.js';
import type { BlockRecord, UnchangedBlockRecord, ZeroBlockRecord } from './block-record.js';

export interface SourceMoverOptions {
  blockSize: number;
  compressor: { name: string; level: number };
  /** Hashing and compression (on worker threads in a session). */
  codec: BlockCodec;
  filters: { name: string; impl: BlockFilter }[];
  /**
   * Blocks read and processed ahead of the consumer (bounds memory: readAhead x blockSize, twice
   * with block slots). Default `defaultReadAhead(blockSize)`.
   */
  readAhead?: number;
  /**
   * Source-side dedup: asked with each block's hash before it is compressed; a block the target
   * already holds is neither compressed nor sent. Missing: every block is compressed and sent.
   */
  isKnown?: (hash: Buffer) => boolean | Promise<boolean>;
  /**
   * Lend block memory: a data record's `encoded` may be a view of a buffer that is reused for a later
   * block once the consumer asks for the next record. For a consumer that copies each record before
   * asking again (the embedded pipe's pack writer); off by default (a data pipe that keeps records
   * for resending gets its own copies).
   */
  lendBuffers?: boolean;
  /**
   * Yield consecutive blocks without data as one record with a `count` (`BlockRun`): holes and
   * unchanged ranges are found from block status and the changed ranges without a record per
   * block, and neighbouring zero blocks (all-zero, dropped by a filter) are joined. Off by default:
   * a consumer written before runs sees one record per block.
   */
  runs?: boolean;
}

/**
 * Incremental runs: where the changed ranges come from. Blocks that no changed range touches are
 * not read; they become `unchanged` records.
 */
export type ChangedRanges = { extents: Extent[] } | { query: (offset: number, length: number) => Promise<Extent[]> };

export interface SourceCounters {
  bytesRead: number;
  zeroBytesSkipped: number;
  bytesTransferred: number;
  /**
   * Blocks each filter (by its `filters:` name) turned into zero blocks: `classify` said `'zero'`,
   * or the block lay wholly in a range its `skipExtents` returned. Also counted as zero blocks.
   */
  filtered?: Record<string, number>;
  /**
   * Bytes inside the filters' skip ranges (swap, pagefile) that were not read, in whole skipped
   * blocks and in parts of blocks; blocks an incremental run carried over unread do not count.
   */
  skippedBytes?: number;
}

/**
 * The filter (its `filters:` name) each range a `skipExtents` returned came from, so the mover can
 * count skipped blocks per filter (`SourceCounters.filtered`); set by `skipExtents` in disk-plan.ts.
 * Kept beside the ranges, not in them: the ranges stay what the filter returned.
 */
export const skipRangeFilter = new WeakMap<Extent, string>();

/** A block's plan: which of its bytes hold data (the rest are holes and are never read). */
interface BlockPlan {
  index: number;
  offset: number;
  length: number;
  data: Extent[];
  unchanged?: boolean;
  /** The filter whose skip range holds the whole block. */
  skippedBy?: string;
}

/**
 * The source-side data mover for one disk: reads the blocks that hold data through the transport,
 * drops zero blocks, hashes, compresses and encodes the rest, and yields one record per block in
 * index order. Reads run ahead of the consumer by a bounded window.
 */
export class SourceMover {
  private readonly readAhead: number;
  /**
   * Moving share of recent blocks that were stored already. It picks, per block, between one worker
   * round trip (hash and compress together: cheap when blocks are new) and hash first (compress
   * only what is new: cheap when most blocks are known). Starts at "new".
   */
  private knownRate = 0;
  /**
   * Blocks of a disk with a file descriptor (`DiskHandle.fd`) are read on the block threads, right
   * before they are hashed and compressed there, when the codec can (`readSlot`) and no filter
   * but the zero check looks at block contents: `null` then, or the zero filter's name.
   */
  private readonly threadReads?: { zeroFilter: string | null };

  constructor(
    private readonly opts: SourceMoverOptions,
    private readonly meters: StageMeters,
  ) {
    this.readAhead = Math.max(1, opts.readAhead ?? defaultReadAhead(opts.blockSize));
    const classifiers = opts.filters.filter((f) => f.impl.classify);
    if (opts.codec.readSlot && classifiers.every((f) => zeroCheckFilters.has(f.impl))) this.threadReads = { zeroFilter: classifiers[0]?.name ?? null };
  }

  /** `from`: the first block to yield (a resumed data pipe starts after the last block the target kept). */
  async *blocks(handle: DiskHandle, skip: Extent[], counters: SourceCounters, changed?: ChangedRanges, from = 0): AsyncGenerator<BlockRecord> {
    const count = Math.ceil(handle.size / this.opts.blockSize);
    const alloc = new AllocationCursor(handle);
    const bs = this.opts.blockSize;
    // What this disk will hand the codec, once known: a small job then starts no threads.
    const expect = (bytes: number): void => this.opts.codec.expectWork?.(bytes);
    const changes = changed && new ChangeCursor(changed, handle.size, (extents) => expect(blockBytes(extents, bs)));
    if (!changes) expect(Math.max(0, handle.size - Math.max(0, from) * bs));
    const skipCursor = new SkipCursor(skip);
    const window: Promise<Produced>[] = [];
    let next = Math.max(0, from);
    let lent: BlockSlot | undefined;
    const runs = this.opts.runs === true;
    /** With `runs`: a run of records without data, yielded once a record that does not extend it comes. */
    let pending: ZeroBlockRecord | UnchangedBlockRecord | undefined;
    try {
      while (next < count || window.length > 0) {
        while (next < count && window.length < this.readAhead) {
          if (runs) {
            const run = await this.blankRun(next, count, handle.size, alloc, skipCursor, changes, counters);
            if (run) {
              window.push(Promise.resolve({ record: run }));
              next += run.count!;
              continue;
            }
          }
          const plan = await this.plan(next++, handle.size, alloc, skipCursor, changes, counters);
          const p = this.produce(handle, plan, counters);
          p.catch(() => undefined); // awaited in order below; avoid an unhandled rejection meanwhile
          window.push(p);
        }
        const { record, slot } = await window.shift()!;
        if (runs && (record.kind === 'zero' || record.kind === 'unchanged')) {
          if (pending && extendsRun(pending, record)) {
            pending.count! += record.count ?? 1;
            pending.length += record.length;
            continue;
          }
          if (pending) yield pending;
          pending = { ...record, count: record.count ?? 1 };
          continue;
        }
        if (pending) {
          const run = pending;
          pending = undefined;
          yield run;
        }
        lent = slot;
        yield record;
        // The consumer asked for the next record: it is done with this one's lent memory.
        lent = undefined;
        if (slot) this.opts.codec.giveSlot(slot);
      }
      if (pending) yield pending;
    } finally {
      // Stopped early (a failure, or the consumer gave up): slots come back as their blocks settle.
      if (lent) this.opts.codec.giveSlot(lent);
      for (const p of window) p.then((r) => r.slot && this.opts.codec.giveSlot(r.slot), () => undefined);
      // Blocks the threads read from the handle's descriptor: finished before the caller may close it
      // (a read of a closed descriptor's number could reach whatever file opens next under it).
      if (this.threadReads && handle.fd !== undefined) await Promise.allSettled(window);
    }
  }

  /**
   * With `runs`: the blocks from `index` on that need no plan of their own, as one record: in an
   * incremental run those no changed range touches (`unchanged`), else those wholly in a hole of
   * the disk's block status that no skip range touches (`zero`, never read). Undefined when block
   * `index` is not such a block. The disk's last block counts when the run reaches the disk's end.
   */
  private async blankRun(
    index: number,
    count: number,
    size: number,
    alloc: AllocationCursor,
    skip: SkipCursor,
    changes: ChangeCursor | undefined,
    counters: SourceCounters,
  ): Promise<ZeroBlockRecord | UnchangedBlockRecord | undefined> {
    const bs = this.opts.blockSize;
    const start = index * bs;
    const end = changes ? await changes.nextChange(start) : Math.min(skip.nextFrom(start), await alloc.holeEnd(start));
    const n = end >= size ? count - index : Math.floor((end - start) / bs);
    if (n <= 0) return undefined;
    const length = Math.min(size, (index + n) * bs) - start;
    if (changes) return { kind: 'unchanged', index, length, count: n };
    counters.zeroBytesSkipped += length;
    return { kind: 'zero', index, length, read: false, count: n };
  }

  /**
   * A block wholly inside the skip ranges is not read; one they cover in part is read without the
   * covered bytes, which stay zeros in the stored block (the block-filter contract).
   */
  private async plan(
    index: number,
    size: number,
    alloc: AllocationCursor,
    skip: SkipCursor,
    changes: ChangeCursor | undefined,
    counters: SourceCounters,
  ): Promise<BlockPlan> {
    const offset = index * this.opts.blockSize;
    const length = Math.min(this.opts.blockSize, size - offset);
    if (changes && !(await changes.touches(offset, offset + length))) return { index, offset, length, data: [], unchanged: true };
    const { covering, by } = skip.within(offset, offset + length);
    if (covering.length === 0) return { index, offset, length, data: await alloc.dataIn(offset, offset + length) };
    counters.skippedBytes = (counters.skippedBytes ?? 0) + covering.reduce((n, e) => n + e.length, 0);
    const skippedBy = by && skipRangeFilter.get(by);
    const whole = covering.length === 1 && covering[0]!.offset === offset && covering[0]!.length === length;
    if (whole) return { index, offset, length, data: [], skippedBy };
    const data = subtract(await alloc.dataIn(offset, offset + length), covering);
    return data.length ? { index, offset, length, data } : { index, offset, length, data: [], skippedBy };
  }

  private async produce(handle: DiskHandle, plan: BlockPlan, counters: SourceCounters): Promise<Produced> {
    if (plan.unchanged) return { record: { kind: 'unchanged', index: plan.index, length: plan.length } };
    if (plan.data.length === 0) {
      counters.zeroBytesSkipped += plan.length;
      if (plan.skippedBy) countFiltered(counters, plan.skippedBy);
      return { record: { kind: 'zero', index: plan.index, length: plan.length, read: false } };
    }
    const { codec } = this.opts;
    // The block goes into a slot and stays there: read, hashed, compressed and encoded in place.
    const slot = codec.takeSlot(plan.length);
    let lent = false;
    try {
      let record: BlockRecord;
      if (this.threadReads && handle.fd !== undefined) {
        record = await this.process(plan, slot, counters, { fd: handle.fd, plan });
      } else {
        const block = slot.raw.subarray(0, plan.length);
        await this.meters['source read'].time(() => this.readInto(handle, plan, block));
        counters.bytesRead += plan.data.reduce((n, e) => n + e.length, 0);
        record = await this.process(plan, slot, counters);
      }
      lent = record.kind === 'data' && record.encoded.buffer === slot.out.buffer;
      return { record, slot: lent ? slot : undefined };
    } finally {
      if (!lent) codec.giveSlot(slot);
    }
  }

  /**
   * Reads a block's data extents into `block`; its holes become zeros. A transport without `readInto`
   * returns new buffers, copied in.
   */
  private async readInto(handle: DiskHandle, plan: BlockPlan, block: Buffer): Promise<void> {
    const readInto = handle.readInto
      ? handle.readInto.bind(handle)
      : async (offset: number, into: Uint8Array): Promise<void> => into.set(await handle.read(offset, into.length));
    const only = plan.data.length === 1 && plan.data[0].offset === plan.offset && plan.data[0].length === plan.length;
    if (only) return readInto(plan.offset, block);
    let at = 0;
    for (const e of plan.data) {
      zeroRange(block, at, e.offset - plan.offset);
      at = e.offset - plan.offset + e.length;
    }
    zeroRange(block, at, block.length);
    await Promise.all(plan.data.map((e) => readInto(e.offset, block.subarray(e.offset - plan.offset, e.offset - plan.offset + e.length))));
  }

  /**
   * Zero check, hash and encode of the block in `slot`; the encoded block object goes to `slot.out`.
   * `from`: the block is not read yet; the first task reads it from this descriptor on the block
   * thread (and checks for zeros there, `threadReads`).
   */
  private async process(plan: BlockPlan, slot: BlockSlot, counters: SourceCounters, from?: { fd: number; plan: BlockPlan }): Promise<BlockRecord> {
    const zero = (name: string): BlockRecord => {
      counters.zeroBytesSkipped += plan.length;
      countFiltered(counters, name);
      return { kind: 'zero', index: plan.index, length: plan.length, read: true };
    };
    if (!from) {
      const block = slot.raw.subarray(0, plan.length);
      for (const f of this.opts.filters) if (f.impl.classify?.(block, plan.offset) === 'zero') return zero(f.name);
    }
    const { name, level } = this.opts.compressor;
    const { codec, isKnown } = this.opts;
    const work = this.meters.processing;
    let read: SlotRead | undefined;
    if (from) {
      const reads: number[] = [];
      for (const e of plan.data) reads.push(e.offset, e.offset - plan.offset, e.length);
      read = { fd: from.fd, reads, zeroCheck: this.threadReads!.zeroFilter !== null };
    }
    const run = async (what: SlotWork): Promise<{ hash?: Buffer; encodedLength?: number; zero?: boolean; seen?: boolean }> => {
      if (!read) return work.time(() => codec.encodeSlot(slot, plan.length, what, name, level)).catch((err) => Promise.reject(blockError(plan, err)));
      const r = await work.time(() => codec.readSlot!(slot, plan.length, read!, what, name, level)).catch((err) => Promise.reject(blockError(plan, err)));
      read = undefined; // read once: a later `compress` works on the slot as it is
      counters.bytesRead += plan.data.reduce((n, e) => n + e.length, 0);
      this.meters['source read'].addMeasured(r.readMs / Math.max(1, (codec as { threads?: number }).threads ?? 1));
      return r;
    };
    // With dedup, the ids met are noted for the block threads (`BlockCodec.noteSeen`).
    const met = (hash: Buffer): Buffer => (isKnown && codec.noteSeen?.(hash), hash);
    const data = (hash: Buffer, encodedLength: number): BlockRecord => {
      const view = slot.out.subarray(0, encodedLength);
      counters.bytesTransferred += encodedLength;
      return { kind: 'data', index: plan.index, length: plan.length, hash: met(hash), encoded: this.opts.lendBuffers ? view : Buffer.from(view) };
    };
    const known = (hash: Buffer): BlockRecord => ({ kind: 'known', index: plan.index, length: plan.length, hash: met(hash) });
    if (!isKnown || this.knownRate < 0.5) {
      // Most recent blocks were new (a first backup): hash and compress in one round trip; the
      // encoded block is dropped when the block turns out to be stored already. A block whose id
      // this session met before comes back uncompressed (`seen`), compressed only if not stored.
      const r = await run('encode');
      if (r.zero) return zero(this.threadReads!.zeroFilter!);
      if (isKnown && this.sawKnown(await isKnown(r.hash!))) return known(r.hash!);
      return data(r.hash!, r.seen ? (await run('compress')).encodedLength! : r.encodedLength!);
    }
    // Most recent blocks were stored already (a second run): hash first, compress only new blocks.
    const { hash, zero: allZero } = await run('hash');
    if (allZero) return zero(this.threadReads!.zeroFilter!);
    if (this.sawKnown(await isKnown(hash!))) return known(hash!);
    return data(hash!, (await run('compress')).encodedLength!);
  }

  /** Updates the moving share of blocks the repository already held (weight 1/8 for the newest). */
  private sawKnown(known: boolean): boolean {
    this.knownRate += ((known ? 1 : 0) - this.knownRate) / 8;
    return known;
  }
}

/**
 * About 8 MiB of blocks in flight per disk: 8 blocks of the default 1 MiB, more of small blocks (32 of
 * 256 KiB, so per-block latency overlaps), at least 4 of large ones (4 of 8 MiB: with 8 in flight a
 * backup peaked at 282 MiB RSS, with 4 at 225 MiB, in the same time).
 */
export function defaultReadAhead(blockSize: number): number {
  return Math.min(32, Math.max(4, Math.floor((8 * 1024 * 1024) / blockSize)));
}

/**
 * Walks a disk's allocation front to back, asking the transport for block status only as far as the
 * blocks being planned need. Without `blockStatus`, everything is data.
 */
class AllocationCursor {
  private extents: AllocationExtent[] = [];
  private covered = 0;

  constructor(private readonly handle: DiskHandle) {}

  async dataIn(start: number, end: number): Promise<Extent[]> {
    if (!this.handle.blockStatus) return [{ offset: start, length: end - start }];
    await this.cover(end);
    this.drop(start);
    const out: Extent[] = [];
    for (const e of this.extents) {
      if (e.offset >= end) break;
      if (e.kind !== 'data') continue;
      const s = Math.max(start, e.offset);
      const t = Math.min(end, e.offset + e.length);
      const prev = out.at(-1);
      if (prev && prev.offset + prev.length === s) prev.length += t - s;
      else out.push({ offset: s, length: t - s });
    }
    return out;
  }

  /**
   * Where the data at or after `start` begins: the end of the hole `start` is in (`start` itself when
   * it is data), the disk's size when only holes follow. Asks for block status only as far as the
   * hole reaches. Without `blockStatus`, everything is data.
   */
  async holeEnd(start: number): Promise<number> {
    if (!this.handle.blockStatus) return start;
    for (let at = start; at < this.handle.size; at = this.covered) {
      await this.cover(at + 1);
      this.drop(at);
      for (const e of this.extents) if (e.kind === 'data') return Math.max(at, e.offset);
    }
    return this.handle.size;
  }

  /** Drops the extents that end at or before `start` (blocks are planned front to back). */
  private drop(start: number): void {
    let k = 0;
    while (k < this.extents.length && this.extents[k].offset + this.extents[k].length <= start) k++;
    if (k > 0) this.extents.splice(0, k);
  }

  /** Asks for block status until it covers `[0, end)`. */
  private async cover(end: number): Promise<void> {
    while (this.covered < end && this.handle.blockStatus) {
      const ask = Math.min(this.handle.size - this.covered, 1024 ** 3);
      const got = await this.handle.blockStatus(this.covered, ask);
      const last = got.at(-1);
      if (!last || got[0].offset !== this.covered || last.offset + last.length <= this.covered) {
        throw new FerryError('TRANSPORT_READ_FAILED', 'block status reply does not cover the range asked for', {
          offset: this.covered,
          hook: 'blockStatus',
        });
      }
      for (const e of got) this.extents.push(e);
      this.covered = Math.min(this.handle.size, last.offset + last.length);
    }
  }
}

/**
 * Walks the changed ranges front to back. A query covers `[covered, covered + window)`; gaps in its
 * answer are unchanged bytes.
 */
class ChangeCursor {
  private extents: Extent[] = [];
  private covered = 0;

  /** `found`: each batch of changed ranges as it becomes known. */
  constructor(
    private readonly source: ChangedRanges,
    private readonly size: number,
    private readonly found: (extents: Extent[]) => void = () => undefined,
  ) {
    if ('extents' in source) {
      this.extents = [...source.extents].sort((a, b) => a.offset - b.offset);
      this.covered = size;
      found(this.extents);
    }
  }

  async touches(start: number, end: number): Promise<boolean> {
    await this.load(end);
    while (this.extents.length && this.extents[0].offset + this.extents[0].length <= start) this.extents.shift();
    return this.extents.some((e) => e.offset < end && e.offset + e.length > start);
  }

  /** Where the first changed range at or after `start` begins (`start` when it is changed), or the disk's size. */
  async nextChange(start: number): Promise<number> {
    for (;;) {
      while (this.extents.length && this.extents[0].offset + this.extents[0].length <= start) this.extents.shift();
      // Sorted by offset: the first range that ends after `start` begins before every later one.
      const first = this.extents[0];
      if (first) return Math.max(start, first.offset);
      // A later query window holds only later ranges.
      if (this.covered >= this.size) return this.size;
      await this.load(this.covered + 1);
    }
  }

  /** Queries the changed ranges until they are known for `[0, end)`. */
  private async load(end: number): Promise<void> {
    while (this.covered < end && 'query' in this.source) {
      const ask = Math.min(this.size - this.covered, 1024 ** 3);
      const got = await this.source.query(this.covered, ask);
      for (const e of got) {
        if (e.offset < this.covered || e.offset + e.length > this.covered + ask || e.length <= 0) {
          throw new FerryError('TRANSPORT_READ_FAILED', `changed range ${e.offset}+${e.length} lies outside the range asked for`, {
            offset: this.covered,
            hook: 'changedBlocks',
          });
        }
      }
      // Each window's answer in offset order; windows come front to back, so all of them are sorted.
      for (const e of [...got].sort((x, y) => x.offset - y.offset)) this.extents.push(e);
      this.covered += ask;
      this.found(got);
    }
  }
}

/** A record, and the slot its lent `encoded` lives in (given back once the consumer moves on). */
interface Produced {
  record: BlockRecord;
  slot?: BlockSlot;
}

/** Names the block: a compressor that fails on one block, or a worker thread that died with it. */
function blockError(plan: BlockPlan, err: unknown): FerryError {
  if (!(err instanceof FerryError)) return new FerryError('INTERNAL', `block ${plan.index}: ${(err as Error)?.message ?? String(err)}`, { offset: plan.offset }, { cause: err });
  return new FerryError(err.code, `block ${plan.index}: ${err.detail}`, { offset: plan.offset, ...err.where }, { cause: err });
}

/** Whether `rec` (a record without data) continues `run`: same kind (and `read`), the next block on. */
function extendsRun(run: ZeroBlockRecord | UnchangedBlockRecord, rec: ZeroBlockRecord | UnchangedBlockRecord): boolean {
  if (rec.kind !== run.kind || run.index + run.count! !== rec.index) return false;
  return rec.kind === 'unchanged' || rec.read === (run as ZeroBlockRecord).read;
}

function countFiltered(counters: SourceCounters, filter: string): void {
  counters.filtered ??= {};
  counters.filtered[filter] = (counters.filtered[filter] ?? 0) + 1;
}

/** Bytes of the whole blocks the ranges touch (a block two ranges touch counts twice: an upper bound). */
function blockBytes(extents: readonly Extent[], blockSize: number): number {
  let n = 0;
  for (const e of extents) n += Math.ceil((e.offset + e.length) / blockSize) * blockSize - Math.floor(e.offset / blockSize) * blockSize;
  return n;
}

/** Ranges sorted and merged where they touch or overlap. */
export function mergeRanges(ranges: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out.at(-1);
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ offset: r.offset, length: r.length });
  }
  return out;
}

/**
 * Walks the skip ranges front to back as blocks are planned in order (thousands of pagefile
 * fragments cost one step each, not one scan per block).
 */
class SkipCursor {
  private readonly merged: Extent[];
  private readonly sorted: Extent[];
  private m = 0;
  private s = 0;

  constructor(skip: readonly Extent[]) {
    this.sorted = [...skip].sort((a, b) => a.offset - b.offset);
    this.merged = mergeRanges(skip);
  }

  /** Where the first skip range that reaches past `start` begins (`start` when one covers it), or Infinity. */
  nextFrom(start: number): number {
    while (this.m < this.merged.length && this.merged[this.m]!.offset + this.merged[this.m]!.length <= start) this.m++;
    return this.m < this.merged.length ? Math.max(start, this.merged[this.m]!.offset) : Infinity;
  }

  /** The skipped parts of `[start, end)`, and a range of a filter that covers some of it (to name the filter). */
  within(start: number, end: number): { covering: Extent[]; by?: Extent } {
    while (this.m < this.merged.length && this.merged[this.m]!.offset + this.merged[this.m]!.length <= start) this.m++;
    while (this.s < this.sorted.length && this.sorted[this.s]!.offset + this.sorted[this.s]!.length <= start && this.sorted[this.s]!.offset < start) this.s++;
    const covering: Extent[] = [];
    for (let i = this.m; i < this.merged.length && this.merged[i]!.offset < end; i++) {
      const r = this.merged[i]!;
      const s = Math.max(start, r.offset);
      const t = Math.min(end, r.offset + r.length);
      if (s < t) covering.push({ offset: s, length: t - s });
    }
    if (covering.length === 0) return { covering };
    for (let i = this.s; i < this.sorted.length && this.sorted[i]!.offset < end; i++) {
      const r = this.sorted[i]!;
      if (r.offset + r.length > start) return { covering, by: r };
    }
    return { covering };
  }
}

/** `data` without the bytes of sorted, merged `cut`. */
export function subtract(data: readonly Extent[], cut: readonly Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const d of data) {
    let at = d.offset;
    const end = d.offset + d.length;
    for (const c of cut) {
      if (c.offset + c.length <= at || c.offset >= end) continue;
      if (c.offset > at) out.push({ offset: at, length: c.offset - at });
      at = Math.max(at, c.offset + c.length);
    }
    if (at < end) out.push({ offset: at, length: end - at });
  }
  return out;
}
