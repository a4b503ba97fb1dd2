import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { createPluginHost } from '../session/job-runtime.js';
import { Prng } from '../testing/vm-image.js';
import { WorkerBlockCodec } from './worker-block-codec.js';

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
});
