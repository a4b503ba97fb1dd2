import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { createPluginHost } from '../session/job-runtime.js';
import { Prng } from '../testing/vm-image.js';
import { NoneCompressor } from '../compression/none-compressor.js';
import { RleCompressor } from '../compression/rle-compressor.js';
import { INLINE_PLANNED_BYTES, INLINE_PLANNED_MS, WorkerBlockCodec } from './worker-block-codec.js';

const BLOCK = 64 * 1024;

function block(seed: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  new Prng(seed).fill(b);
  return b;
}

describe('WorkerPool: threads start as work needs them', function () {
  let codec: WorkerBlockCodec | undefined;
  afterEach(async () => {
    await codec?.close();
    codec = undefined;
  });

  it('runs a one-block job on one thread, not one per core', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 4);
    const b = block(1);
    const r = await codec.encode(Buffer.from(b), 'none', 0);
    expect(r.hash.equals(createHash('sha256').update(b).digest())).to.equal(true);
    await codec.encode(Buffer.from(b), 'none', 0);
    expect(codec.threads).to.equal(1);
  });

  it('starts more threads (up to the maximum) while tasks wait, and they know the slots announced before them', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 3);
    const c = codec;
    // Slots are announced while only the first thread runs; threads started later must know them.
    const slots = Array.from({ length: 8 }, () => c.takeSlot(BLOCK));
    expect(c.threads).to.equal(1);
    const blocks = slots.map((_, i) => block(100 + i));
    slots.forEach((s, i) => blocks[i].copy(s.raw));
    const results = await Promise.all(slots.map((s) => c.encodeSlot(s, BLOCK, 'hash', 'none', 0)));
    expect(c.threads).to.equal(3);
    results.forEach((r, i) => expect(r.hash!.equals(createHash('sha256').update(blocks[i]).digest()), `slot ${i}`).to.equal(true));
  });

  it('starts every thread at once when asked (a resident service), and they work', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 3);
    codec.startThreads();
    expect(codec.workerThreads).to.equal(3);
    const b = block(7);
    const r = await codec.encode(Buffer.from(b), 'none', 0);
    expect(r.hash.equals(createHash('sha256').update(b).digest())).to.equal(true);
    expect(codec.workerThreads).to.equal(3);
  });
});

describe('WorkerBlockCodec with an inline budget: a small job starts no thread', function () {
  let codec: WorkerBlockCodec | undefined;
  afterEach(async () => {
    await codec?.close();
    codec = undefined;
  });
  const inline = (bytes: number) => ({ compressor: async (n: string) => (n === 'rle' ? new RleCompressor() : new NoneCompressor()), bytes });

  it('does the first blocks on the calling thread, then hands over to the threads with the same results', async function () {
    const host = await createPluginHost();
    const threaded = new WorkerBlockCodec(host.options, 2);
    codec = new WorkerBlockCodec(host.options, 2, undefined, inline(2 * BLOCK));
    const c = codec;
    try {
      const text = Buffer.alloc(BLOCK, 'block text that compresses ');
      const a = await c.encode(Buffer.from(text), 'rle', 1);
      // a slot announced while no thread runs is known to the thread that starts later
      const slot = c.takeSlot(BLOCK);
      text.copy(slot.raw);
      const b = await c.encodeSlot(slot, BLOCK, 'encode', 'rle', 1);
      expect(c.workerThreads, 'two blocks within the budget').to.equal(0);
      const later = c.takeSlot(BLOCK);
      text.copy(later.raw);
      const d = await c.encodeSlot(later, BLOCK, 'encode', 'rle', 1);
      expect(c.workerThreads, 'past the budget').to.equal(1);
      const ref = await threaded.encode(Buffer.from(text), 'rle', 1);
      expect(a.hash.equals(ref.hash) && a.encoded.equals(ref.encoded)).to.equal(true);
      expect(Buffer.from(b.hash!).equals(ref.hash) && Buffer.from(d.hash!).equals(ref.hash)).to.equal(true);
      expect(slot.out.subarray(0, b.encodedLength).equals(ref.encoded)).to.equal(true);
      expect(later.out.subarray(0, d.encodedLength).equals(ref.encoded)).to.equal(true);
      expect((await c.decode(ref.encoded, ref.hash, 'x')).equals(text)).to.equal(true);
    } finally {
      await threaded.close();
    }
  });

  it('checks blocks inline as strictly as the threads: a wrong hash is REPO_CORRUPT_OBJECT', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 2, undefined, inline(4 * BLOCK));
    const { encoded } = await codec.encode(block(7), 'none', 0);
    let err: unknown;
    await codec.decode(encoded, Buffer.alloc(32), 'block 7').catch((e: unknown) => (err = e));
    expect((err as { code?: string }).code).to.equal('REPO_CORRUPT_OBJECT');
    expect(codec.workerThreads).to.equal(0);
  });

  it('keeps work announced as small on the calling thread; work announced as large goes to the threads past the start budget', async function () {
    const host = await createPluginHost();
    codec = new WorkerBlockCodec(host.options, 2, undefined, inline(BLOCK));
    codec.expectWork(2 * BLOCK);
    codec.expectWork(BLOCK);
    for (let i = 0; i < 3; i++) await codec.encode(block(20 + i), 'none', 0);
    expect(codec.workerThreads, 'three announced blocks, budget one').to.equal(0);
    await codec.close();
    codec = new WorkerBlockCodec(host.options, 2, undefined, inline(BLOCK));
    codec.expectWork(INLINE_PLANNED_BYTES);
    codec.expectWork(BLOCK);
    await codec.encode(block(30), 'none', 0);
    expect(codec.workerThreads, 'the start budget still runs inline').to.equal(0);
    await codec.encode(block(31), 'none', 0);
    expect(codec.workerThreads, 'more than INLINE_PLANNED_BYTES announced').to.equal(1);
  });

  it('sends announced work to the threads after the start budget when this thread is too slow for the rest', async function () {
    const host = await createPluginHost();
    // a compressor that takes INLINE_PLANNED_MS per block: the announced rest would take far longer inline
    const none = new NoneCompressor();
    const slow = async () => ({
      compress: (data: Uint8Array) => {
        const until = performance.now() + INLINE_PLANNED_MS / 2;
        while (performance.now() < until);
        return none.compress(data);
      },
      decompress: (data: Uint8Array, rawLength: number) => none.decompress(data, rawLength),
    });
    codec = new WorkerBlockCodec(host.options, 2, undefined, { compressor: slow as never, bytes: BLOCK });
    codec.expectWork(8 * BLOCK);
    await codec.encode(block(40), 'none', 0);
    expect(codec.workerThreads, 'the start budget runs inline').to.equal(0);
    await codec.encode(block(41), 'none', 0);
    expect(codec.workerThreads, 'seven more blocks at that rate exceed INLINE_PLANNED_MS').to.equal(1);
  });
});
