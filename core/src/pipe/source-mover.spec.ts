import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdtempSync, openSync, closeSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { DiskHandle } from '../contracts/transport.js';
import { newStageMeters } from './stage-meter.js';
import { createPluginHost } from '../session/job-runtime.js';
import { Prng } from '../testing/vm-image.js';
import { decodeBlock } from '../repository/block-object.js';
import { NoneCompressor } from '../compression/none-compressor.js';
import { RleCompressor } from '../compression/rle-compressor.js';
import type { BlockRecord } from './block-record.js';
import { WorkerBlockCodec } from './worker-block-codec.js';
import { ZeroBlockFilter } from '../filters/zero-block-filter.js';
import { guardFilter } from '../plugins/plugin-guard.js';
import { FerryError } from '../errors.js';
import { defaultReadAhead, skipRangeFilter, SourceMover, type SourceCounters } from './source-mover.js';

const BLOCK = 256 * 1024;

/** A disk in memory: 24 blocks of mixed content, the 5th a hole, the 9th half hole; `readInto` optional. */
function memoryDisk(withReadInto: boolean): { handle: DiskHandle; bytes: Buffer } {
  const rng = new Prng(9);
  const bytes = Buffer.alloc(24 * BLOCK);
  for (let i = 0; i < 24; i++) {
    const b = bytes.subarray(i * BLOCK, (i + 1) * BLOCK);
    if (i % 3 === 0) rng.fill(b);
    else b.fill(`block ${i} of the memory disk `);
  }
  bytes.fill(0, 4 * BLOCK, 5 * BLOCK);
  bytes.fill(0, 8 * BLOCK + BLOCK / 2, 9 * BLOCK);
  const handle: DiskHandle = {
    size: bytes.length,
    read: async (o, l) => Buffer.from(bytes.subarray(o, o + l)),
    blockStatus: async (o, l) => {
      const out = [];
      for (let at = o; at < Math.min(bytes.length, o + l); ) {
        const hole = (at >= 4 * BLOCK && at < 5 * BLOCK) || (at >= 8 * BLOCK + BLOCK / 2 && at < 9 * BLOCK);
        const end = hole ? (at < 5 * BLOCK ? 5 * BLOCK : 9 * BLOCK) : at < 4 * BLOCK ? 4 * BLOCK : at < 8 * BLOCK + BLOCK / 2 ? 8 * BLOCK + BLOCK / 2 : bytes.length;
        out.push({ offset: at, length: end - at, kind: hole ? ('zero' as const) : ('data' as const) });
        at = end;
      }
      return out;
    },
    close: async () => undefined,
  };
  if (withReadInto) {
    handle.readInto = async (o, into) => {
      // Fill the caller's buffer with garbage first: a hole the mover forgets to zero shows.
      into.fill(0xee);
      into.set(bytes.subarray(o, o + into.length));
    };
  }
  return { handle, bytes };
}

const compressors = (n: string) => (n === 'none' ? new NoneCompressor() : n === 'rle' ? new RleCompressor() : undefined);

describe('SourceMover with the worker codec: block slots, lending and holes', function () {
  let codec: WorkerBlockCodec;
  before(async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 2);
  });
  after(() => codec.close());

  async function collect(withReadInto: boolean, lendBuffers: boolean, keep: boolean): Promise<{ records: BlockRecord[]; decoded: Map<number, Buffer>; bytes: Buffer }> {
    const { handle, bytes } = memoryDisk(withReadInto);
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec, filters: [], lendBuffers, readAhead: 6 }, newStageMeters());
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    const records: BlockRecord[] = [];
    const decoded = new Map<number, Buffer>();
    for await (const r of mover.blocks(handle, [], counters)) {
      records.push(r);
      // Decoded now, while a lent record is still valid; `keep` checks the record again at the end.
      if (r.kind === 'data') decoded.set(r.index, Buffer.from(decodeBlock(r.encoded, `block ${r.index}`, compressors)));
    }
    if (keep) for (const r of records) if (r.kind === 'data') expect(Buffer.from(decodeBlock(r.encoded, `block ${r.index}`, compressors)).equals(decoded.get(r.index)!), `block ${r.index} changed after it was yielded`).to.equal(true);
    return { records, decoded, bytes };
  }

  for (const [label, withReadInto, lend] of [
    ['fresh buffers (a transport without readInto)', false, false],
    ['slots, records copied (lendBuffers off, as the proxy service)', true, false],
    ['slots, records lent (the embedded pipe)', true, true],
  ] as const) {
    it(`yields every block with the right bytes and hash: ${label}`, async function () {
      const { records, decoded, bytes } = await collect(withReadInto, lend, !lend);
      expect(records.map((r) => r.index)).to.deep.equal([...Array(24).keys()]);
      expect(records[4].kind).to.equal('zero');
      for (const r of records) {
        if (r.kind !== 'data') continue;
        const want = bytes.subarray(r.index * BLOCK, (r.index + 1) * BLOCK);
        expect(decoded.get(r.index)!.equals(want), `block ${r.index}`).to.equal(true);
        expect(r.hash.equals(createHash('sha256').update(want).digest()), `hash of block ${r.index}`).to.equal(true);
      }
    });
  }

  it('gives every slot back when the consumer stops early (the lent one and those still in flight)', async function () {
    const { handle } = memoryDisk(true);
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec, filters: [], lendBuffers: true, readAhead: 6 }, newStageMeters());
    let seen = 0;
    for await (const r of mover.blocks(handle, [], { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 })) {
      if (r.kind === 'data' && ++seen === 3) break;
    }
    const pool = codec as unknown as { slotCount: number; freeSlots: unknown[] };
    const deadline = Date.now() + 5000;
    while (pool.freeSlots.length < pool.slotCount && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(pool.freeSlots.length).to.equal(pool.slotCount);
  });

  it('counts the blocks each filter dropped, by classify or a skip range, under the filter name', async function () {
    const { handle } = memoryDisk(true);
    const filters = [
      { name: 'every-7th', impl: { classify: (_b: Uint8Array, offset: number) => (offset / BLOCK) % 7 === 0 ? ('zero' as const) : ('keep' as const) } },
      { name: 'swap', impl: { skipExtents: async () => [] } },
    ];
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec, filters, readAhead: 6 }, newStageMeters());
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    // Blocks 10-12 wholly in swap's range, 13 only partly; block 4 is a hole (a zero block no filter dropped).
    const skip = [{ offset: 10 * BLOCK, length: 3 * BLOCK + 100 }];
    skipRangeFilter.set(skip[0], 'swap');
    const kinds: string[] = [];
    for await (const r of mover.blocks(handle, skip, counters)) kinds.push(r.kind);
    expect(counters.filtered).to.deep.equal({ 'every-7th': 4, swap: 3 }); // blocks 0, 7, 14, 21; 10-12
    expect(kinds.filter((k) => k === 'zero')).to.have.length(4 + 3 + 1);
  });

  it('never reads the bytes of a skip range: a block covered in part keeps the rest and stores zeros there', async function () {
    const { handle, bytes } = memoryDisk(true);
    const asked: [number, number][] = [];
    const read = handle.readInto!.bind(handle);
    handle.readInto = async (o, into) => {
      asked.push([o, into.length]);
      await read(o, into);
    };
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec, filters: [], readAhead: 6 }, newStageMeters());
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    // A swap area whose header page (4 KiB) starts block 6: the rest of 6, all of 7, and block 8 up to
    // 100 bytes before its hole (8's second half); a second range inside block 12 only.
    const skip = [
      { offset: 6 * BLOCK + 4096, length: 2 * BLOCK + BLOCK / 2 - 4096 - 100 },
      { offset: 12 * BLOCK + 1000, length: 5000 },
    ];
    const records = new Map<number, Buffer>();
    const kinds = new Map<number, string>();
    for await (const r of mover.blocks(handle, skip, counters)) {
      kinds.set(r.index, r.kind);
      if (r.kind === 'data') records.set(r.index, Buffer.from(decodeBlock(r.encoded, `block ${r.index}`, compressors)));
    }
    for (const [o, l] of asked) {
      for (const s of skip) expect(o + l <= s.offset || o >= s.offset + s.length, `read ${o}+${l} overlaps a skip range`).to.equal(true);
    }
    const expected = (i: number): Buffer => {
      const b = Buffer.from(bytes.subarray(i * BLOCK, (i + 1) * BLOCK));
      for (const s of skip) {
        const from = Math.max(s.offset, i * BLOCK) - i * BLOCK;
        const to = Math.min(s.offset + s.length, (i + 1) * BLOCK) - i * BLOCK;
        if (from < to) b.fill(0, from, to);
      }
      return b;
    };
    expect(records.get(6)!.equals(expected(6)), 'block 6: header page kept, the rest zeros').to.equal(true);
    expect(records.get(6)!.subarray(0, 4096).equals(bytes.subarray(6 * BLOCK, 6 * BLOCK + 4096))).to.equal(true);
    expect(kinds.get(7)).to.equal('zero');
    expect(records.get(8)!.equals(expected(8)), 'block 8: 100 bytes kept before its hole').to.equal(true);
    expect(records.get(12)!.equals(expected(12)), 'block 12: 5000 bytes zeroed inside').to.equal(true);
    for (const i of [5, 9, 11, 13]) expect(records.get(i)?.equals(bytes.subarray(i * BLOCK, (i + 1) * BLOCK)) ?? kinds.get(i) === 'zero', `block ${i} untouched`).to.equal(true);
    expect(counters.skippedBytes).to.equal(skip[0]!.length + skip[1]!.length);
  });

  it('gives the slots back: a second disk after the first reuses them instead of allocating more', async function () {
    await collect(true, true, false);
    const after1 = (codec as unknown as { slotCount: number }).slotCount;
    await collect(true, true, false);
    expect((codec as unknown as { slotCount: number }).slotCount).to.equal(after1);
    expect(after1).to.be.at.most(6 + 2);
  });
});

describe('SourceMover: blocks read on the block threads from a descriptor (DiskHandle.fd)', function () {
  let codec: WorkerBlockCodec;
  let dir: string;
  before(async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 2);
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-fd-reads-'));
  });
  after(async () => {
    await codec.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** The memory disk as a file, its handle with `fd` and a `readInto` that counts (and poisons) its calls. */
  function fileDisk(bytes: Buffer, size = bytes.length): { handle: DiskHandle; handleReads: () => number; close: () => void } {
    const file = path.join(dir, `disk-${Math.random().toString(16).slice(2)}.raw`);
    writeFileSync(file, bytes);
    const fd = openSync(file, 'r');
    const { handle } = memoryDisk(true);
    let reads = 0;
    const readInto = handle.readInto!;
    return {
      handle: { ...handle, size, fd, readInto: (o, into) => (reads++, readInto(o, into)) },
      handleReads: () => reads,
      close: () => closeSync(fd),
    };
  }

  async function run(handle: DiskHandle, filters: { name: string; impl: object }[]) {
    const mover = new SourceMover(
      { blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec, filters: filters as never, lendBuffers: true, readAhead: 6, isKnown: () => false },
      newStageMeters(),
    );
    const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    const out = new Map<number, BlockRecord & { raw?: Buffer }>();
    for await (const r of mover.blocks(handle, [], counters)) {
      out.set(r.index, r.kind === 'data' ? { ...r, raw: Buffer.from(decodeBlock(r.encoded, `block ${r.index}`, compressors)) } : r);
    }
    return { out, counters };
  }

  it('reads each block on the thread that hashes it, zeros its holes, and runs the zero check there', async function () {
    const { bytes } = memoryDisk(true);
    bytes.fill(0, 2 * BLOCK, 3 * BLOCK); // allocated, all zeros: the zero filter's block
    const disk = fileDisk(bytes);
    try {
      const { out, counters } = await run(disk.handle, [{ name: 'zero', impl: guardFilter(new ZeroBlockFilter(), '@ferry/core') }]);
      expect(disk.handleReads(), 'blocks read through the handle').to.equal(0);
      expect([...out.keys()]).to.deep.equal([...Array(24).keys()]);
      expect(out.get(2)!.kind).to.equal('zero');
      expect(out.get(4)!.kind).to.equal('zero');
      expect(counters.filtered).to.deep.equal({ zero: 1 });
      for (const r of out.values()) {
        if (r.kind !== 'data') continue;
        const want = bytes.subarray(r.index * BLOCK, (r.index + 1) * BLOCK);
        expect(r.raw!.equals(want), `block ${r.index}`).to.equal(true);
        expect(r.hash.equals(createHash('sha256').update(want).digest()), `hash of block ${r.index}`).to.equal(true);
      }
      // Block 8's second half is a hole: not read, and zeros in the stored block.
      expect(counters.bytesRead).to.equal(23 * BLOCK - BLOCK / 2);
    } finally {
      disk.close();
    }
  });

  it('reads through the handle when a filter of its own looks at the blocks', async function () {
    const { bytes } = memoryDisk(true);
    const disk = fileDisk(bytes);
    try {
      const { out } = await run(disk.handle, [{ name: 'every-7th', impl: { classify: (_b: Uint8Array, o: number) => ((o / BLOCK) % 7 === 0 ? 'zero' : 'keep') } }]);
      expect(disk.handleReads()).to.be.greaterThan(0);
      expect(out.get(7)!.kind).to.equal('zero');
    } finally {
      disk.close();
    }
  });

  it('a consumer that stops early gets control back only after every descriptor read has finished', async function () {
    const { bytes } = memoryDisk(true);
    const disk = fileDisk(bytes);
    let reading = 0;
    // The codec with slow thread reads: several are still running when the consumer stops.
    const slow = new Proxy(codec, {
      get(target, key) {
        const v = Reflect.get(target, key, target) as unknown;
        if (key === 'readSlot') {
          return async (...args: Parameters<NonNullable<WorkerBlockCodec['readSlot']>>) => {
            reading++;
            try {
              await new Promise((r) => setTimeout(r, 30));
              return await target.readSlot!(...args);
            } finally {
              reading--;
            }
          };
        }
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    try {
      const mover = new SourceMover(
        { blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec: slow, filters: [], lendBuffers: true, readAhead: 6, isKnown: () => false },
        newStageMeters(),
      );
      let seen = 0;
      for await (const r of mover.blocks(disk.handle, [], { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 })) {
        if (r.kind === 'data' && ++seen === 2) break;
      }
      expect(reading, 'thread reads still running after the mover returned').to.equal(0);
    } finally {
      disk.close();
    }
  });

  it('a file that ends early fails the block with TRANSPORT_READ_FAILED at its offset', async function () {
    const { bytes } = memoryDisk(true);
    const disk = fileDisk(bytes.subarray(0, 20 * BLOCK + 100), bytes.length);
    try {
      const err = await run(disk.handle, []).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(FerryError);
      expect((err as FerryError).code).to.equal('TRANSPORT_READ_FAILED');
      expect((err as FerryError).where.offset).to.equal(20 * BLOCK);
      expect((err as FerryError).message).to.match(/the image ends at byte 5242980/);
    } finally {
      disk.close();
    }
  });
});

describe('SourceMover: blocks met before in the session are not compressed again', function () {
  let codec: WorkerBlockCodec;
  before(async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 2);
  });
  after(() => codec.close());

  /**
   * Blocks 3, 10 and 17 of the memory disk are the same bytes; `stored` answers the mover's dedup
   * question, `onRecord` sees each record as it is yielded. Returns the `encode` answers too.
   */
  async function run(stored: (hash: Buffer) => boolean, onRecord: (r: BlockRecord) => void = () => undefined) {
    const { handle, bytes } = memoryDisk(true);
    bytes.copy(bytes, 10 * BLOCK, 3 * BLOCK, 4 * BLOCK);
    bytes.copy(bytes, 17 * BLOCK, 3 * BLOCK, 4 * BLOCK);
    const answers: { seen?: boolean }[] = [];
    const spy = Object.assign(Object.create(codec) as WorkerBlockCodec, {
      encodeSlot: async (...a: Parameters<WorkerBlockCodec['encodeSlot']>) => {
        const r = await codec.encodeSlot(...a);
        if (a[2] === 'encode') answers.push(r);
        return r;
      },
    });
    // One block at a time: a copy is met only after its first sighting was yielded.
    const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'rle', level: 1 }, codec: spy, filters: [], readAhead: 1, isKnown: (h) => stored(h) }, newStageMeters());
    const records: BlockRecord[] = [];
    for await (const r of mover.blocks(handle, [], { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 })) {
      onRecord(r);
      records.push(r);
    }
    return { records, answers, bytes };
  }

  it('a copy whose id was met comes back hashed only, and is a known block', async function () {
    // As the target mover: a block handed over as data is stored (reserved) from then on.
    const held = new Set<string>();
    const { records, answers } = await run(
      (h) => held.has(h.toString('hex')),
      (r) => r.kind === 'data' && held.add(r.hash.toString('hex')),
    );
    expect(records[3]!.kind).to.equal('data');
    expect(records[10]!.kind).to.equal('known');
    expect(records[17]!.kind).to.equal('known');
    expect(answers.filter((a) => a.seen)).to.have.length(2);
  });

  it('a copy met before but not stored after all is compressed then, with the right bytes', async function () {
    const { records, answers, bytes } = await run(() => false);
    expect(answers.filter((a) => a.seen).length, 'copies answered hashed only').to.be.at.least(2);
    for (const i of [3, 10, 17]) {
      const r = records[i]!;
      expect(r.kind).to.equal('data');
      if (r.kind !== 'data') continue;
      expect(Buffer.from(decodeBlock(r.encoded, `block ${i}`, compressors)).equals(bytes.subarray(i * BLOCK, (i + 1) * BLOCK)), `block ${i}`).to.equal(true);
    }
  });
});

describe('SourceMover: the work it announces to the codec', function () {
  /** Records `expectWork` and hashes on this thread: the mover's side of the contract only. */
  async function announced(changed?: Parameters<SourceMover['blocks']>[3], from = 0): Promise<number[]> {
    const host = await createPluginHost();
    const codec = new WorkerBlockCodec(host.options, 1, undefined, { compressor: async () => new NoneCompressor(), bytes: 64 * BLOCK });
    const seen: number[] = [];
    const spy = Object.assign(Object.create(codec) as WorkerBlockCodec, { expectWork: (n: number) => seen.push(n) });
    try {
      const mover = new SourceMover({ blockSize: BLOCK, compressor: { name: 'none', level: 0 }, codec: spy, filters: [], readAhead: 4 }, newStageMeters());
      const counters: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
      for await (const _r of mover.blocks(memoryDisk(true).handle, [], counters, changed, from)) void _r;
    } finally {
      await codec.close();
    }
    return seen;
  }

  it('a full run announces the disk from its first block on', async function () {
    expect(await announced()).to.deep.equal([24 * BLOCK]);
    expect(await announced(undefined, 20)).to.deep.equal([4 * BLOCK]);
  });

  it('an incremental run announces the whole blocks its changed ranges touch, as each batch is known', async function () {
    const extents = [
      { offset: BLOCK + 10, length: 20 },
      { offset: 3 * BLOCK - 1, length: 2 },
    ];
    expect(await announced({ extents })).to.deep.equal([3 * BLOCK]);
    const asked: number[] = [];
    const query = async (offset: number, length: number) => (asked.push(offset), offset === 0 ? [{ offset: 2 * BLOCK, length: BLOCK }] : []);
    expect(await announced({ query })).to.deep.equal([BLOCK]);
    expect(asked).to.deep.equal([0]);
  });
});

describe('defaultReadAhead', function () {
  it('keeps about 8 MiB in flight: more small blocks, at least 4 large ones', function () {
    const KiB = 1024;
    expect([256, 512, 1024, 4096, 8192].map((k) => defaultReadAhead(k * KiB))).to.deep.equal([32, 16, 8, 4, 4]);
  });
});
