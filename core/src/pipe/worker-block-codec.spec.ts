import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { FerryError } from '../errors.js';
import { createPluginHost } from '../session/job-runtime.js';
import { Prng } from '../testing/vm-image.js';
import type { BlockTask } from './block-tasks.js';
import { WorkerBlockCodec } from './worker-block-codec.js';

const BLOCK = 64 * 1024;

describe('WorkerBlockCodec: what a decode sends to a thread', function () {
  let codec: WorkerBlockCodec | undefined;
  afterEach(async () => {
    await codec?.close();
    codec = undefined;
  });

  it('sends a block id that is a view of a large block map as 32 bytes, not the whole map', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 1);
    const raw = Buffer.alloc(BLOCK);
    new Prng(7).fill(raw);
    const { hash, encoded } = await codec.encode(Buffer.from(raw), 'none', 0);
    // A restore's ids are views of its block map's entries (2 MiB for a 64 GiB disk of 1 MiB blocks).
    const entries = Buffer.alloc(2 * 1024 * 1024);
    hash.copy(entries, 4096);
    const id = entries.subarray(4096, 4096 + 32);
    const sent: BlockTask[] = [];
    const pool = (codec as unknown as { pool: { run: (t: BlockTask, x: ArrayBuffer[]) => Promise<unknown> } }).pool;
    const run = pool.run.bind(pool);
    pool.run = (task, transfer) => (sent.push(task), run(task, transfer));
    const slot = codec.takeSlot(BLOCK);
    const n = await codec.decodeSlot(Buffer.from(encoded), id, 'block', slot);
    expect(slot.raw.subarray(0, n).equals(raw)).to.equal(true);
    expect((await codec.decode(Buffer.from(encoded), id, 'block')).equals(raw)).to.equal(true);
    expect(sent.map((t) => (t as { hash: Uint8Array }).hash.buffer.byteLength)).to.deep.equal([32, 32]);
  });

  it('decodes a block read into the slot\'s own buffer without sending its bytes', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 1);
    const raw = Buffer.alloc(BLOCK, 'text that compresses ');
    const { hash, encoded } = await codec.encode(Buffer.from(raw), 'rle', 1);
    const sent: BlockTask[] = [];
    const pool = (codec as unknown as { pool: { run: (t: BlockTask, x: ArrayBuffer[]) => Promise<unknown> } }).pool;
    const run = pool.run.bind(pool);
    pool.run = (task, transfer) => (sent.push(task), run(task, transfer));
    const slot = codec.takeSlot(BLOCK);
    encoded.copy(slot.out);
    const n = await codec.decodeSlot(slot.out.subarray(0, encoded.length), hash, 'block', slot);
    expect(slot.raw.subarray(0, n).equals(raw)).to.equal(true);
    expect(sent).to.have.length(1);
    expect(sent[0]).to.include({ op: 'slot-decode', encodedLength: encoded.length });
    expect((sent[0] as { encoded?: Uint8Array }).encoded).to.equal(undefined);
    // and checked like any block: a changed byte fails the read
    slot.out[encoded.length - 10] ^= 1;
    const err = await codec.decodeSlot(slot.out.subarray(0, encoded.length), hash, 'block', slot).catch((e: { code?: string }) => e);
    expect((err as { code?: string }).code).to.equal('REPO_CORRUPT_OBJECT');
  });

  it('reads a block object from a local file on the thread that decodes it: into an aligned slot, checked, errors coded as a backend read', async function () {
    codec = new WorkerBlockCodec((await createPluginHost()).options, 1);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-codec-read-'));
    try {
      const raw = Buffer.alloc(BLOCK);
      new Prng(9).fill(raw);
      const { hash, encoded } = await codec.encode(Buffer.from(raw), 'none', 0);
      const file = path.join(dir, 'pack');
      writeFileSync(file, Buffer.concat([Buffer.alloc(100, 1), encoded, Buffer.alloc(50, 2)]));
      const slot = codec.takeSlot(BLOCK, { aligned: true });
      expect(slot.aligned).to.equal(true);
      const range = { file, key: 'packs/x', offset: 100, length: encoded.length };
      const n = await codec.readDecodeSlot(range, hash, 'block x', slot);
      expect(slot.raw.subarray(0, n).equals(raw)).to.equal(true);
      const fails = (r: typeof range) => codec!.readDecodeSlot(r, hash, 'block x', slot).then(() => undefined, (e: FerryError) => e);
      expect((await fails({ ...range, file: path.join(dir, 'gone') }))?.code).to.equal('REPO_OBJECT_NOT_FOUND');
      const short = await fails({ ...range, offset: 200 });
      expect(short?.code).to.equal('REPO_CORRUPT_OBJECT');
      expect(short?.message).to.include('packs/x');
      const damaged = readFileSync(file);
      damaged[100 + 40] ^= 0xff;
      writeFileSync(file, damaged);
      expect((await fails(range))?.code).to.equal('REPO_CORRUPT_OBJECT');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
