import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { InlineBlockCodec, encodeRawBlock } from './block-codec.js';
import { NoneCompressor } from '../compression/none-compressor.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { BlockStore } from './block-store.js';
import { writeDamagedBlocks } from './damaged-blocks.js';
import { PackWriter } from './pack-writer.js';

describe('block store (packs, index, dedup)', function () {
  const none = new NoneCompressor();
  const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined));
  const rng = new Prng(3);
  const block = (): { raw: Buffer; hash: Buffer; encoded: Buffer } => {
    const raw = rng.fill(Buffer.alloc(300 * 1024));
    return { raw, ...encodeRawBlock(raw, 'none', none, 0) };
  };

  /** Two new blocks stored in one pack of `backend`. */
  async function storeTwo(backend: MemoryBackend): Promise<ReturnType<typeof block>[]> {
    const store = new BlockStore(backend);
    await store.load();
    const blocks = [block(), block()];
    for (const b of blocks) {
      store.reserve(b.hash);
      await store.add(b.hash, b.encoded);
    }
    await store.flush();
    return blocks;
  }

  /**
   * Damages the pack of `blocks` in `backend`, then a slot read through a fresh store on it fails
   * naming the pack (a flipped byte) and then the block (the pack cut short).
   */
  async function expectDamageNamed(backend: MemoryBackend, blocks: { hash: Buffer }[], slot: ReturnType<InlineBlockCodec['takeSlot']>): Promise<void> {
    const key = [...backend.objects.keys()].find((k) => k.startsWith('packs/'))!;
    backend.objects.get(key)![5000] ^= 0xff;
    const err = await new BlockStore(backend).read(blocks[0].hash, codec, slot).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_CORRUPT_OBJECT');
    expect((err as FerryError).message).to.include(key);
    backend.objects.set(key, backend.objects.get(key)!.subarray(0, 1000));
    const short = await new BlockStore(backend).read(blocks[1].hash, codec, slot).catch((e: FerryError) => e);
    expect((short as FerryError).code).to.equal('REPO_CORRUPT_OBJECT');
    expect((short as FerryError).message).to.include(`block ${blocks[1].hash.toString('hex')}`);
  }

  it('stores blocks in ~16 MiB packs with one index each, and reads every one back after reopening', async function () {
    const backend = new MemoryBackend();
    const store = new BlockStore(backend);
    await store.load();
    const blocks = Array.from({ length: 120 }, block);
    for (const b of blocks) {
      expect(store.reserve(b.hash)).to.equal(true);
      await store.add(b.hash, b.encoded);
    }
    await store.flush();
    const packs = [...backend.objects.keys()].filter((k) => k.startsWith('packs/'));
    const indexes = [...backend.objects.keys()].filter((k) => k.startsWith('index/'));
    expect(packs.length).to.equal(3); // 120 x 300 KiB = 35 MiB
    expect(indexes.length).to.equal(3);
    for (const k of packs) expect(backend.objects.get(k)!.length).to.be.at.most(16 * 1024 * 1024 + 64 * 1024);
    const reopened = new BlockStore(backend);
    for (const b of [blocks[0], blocks[57], blocks[119]]) {
      expect(await reopened.has(b.hash)).to.equal(true);
      expect((await reopened.read(b.hash, codec)).equals(b.raw)).to.equal(true);
    }
  });

  it('reserves a hash once, whether stored or still buffered', async function () {
    const store = new BlockStore(new MemoryBackend());
    await store.load();
    const b = block();
    expect(store.reserve(b.hash)).to.equal(true);
    expect(store.reserve(b.hash)).to.equal(false);
    await store.add(b.hash, b.encoded);
    await store.flush();
    expect(store.reserve(b.hash)).to.equal(false);
  });

  it('a block damaged inside its pack fails its read with the pack and offset named', async function () {
    const backend = new MemoryBackend();
    const store = new BlockStore(backend);
    await store.load();
    const b = block();
    store.reserve(b.hash);
    await store.add(b.hash, b.encoded);
    await store.flush();
    const key = [...backend.objects.keys()].find((k) => k.startsWith('packs/'))!;
    backend.objects.get(key)![5000] ^= 0xff;
    const err = await new BlockStore(backend).read(b.hash, codec).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_CORRUPT_OBJECT');
    expect((err as FerryError).message).to.include(key);
  });

  it('reads a block into a slot without new memory, as checked as any read: damage names the pack', async function () {
    const backend = new MemoryBackend();
    const blocks = await storeTwo(backend);
    const slot = codec.takeSlot(300 * 1024);
    const reader = new BlockStore(backend);
    for (const b of blocks) {
      const got = await reader.read(b.hash, codec, slot);
      expect(got.equals(b.raw)).to.equal(true);
      expect(got.buffer).to.equal(slot.raw.buffer);
    }
    await expectDamageNamed(backend, blocks, slot);
  });

  it('with a backend that names local files, a slot read is the codec\'s own read of the pack file: the same bytes, damage named', async function () {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-local-packs-'));
    try {
      const backend = new MemoryBackend();
      /** Each object as a file of its own, written when asked for (packs only change by damage here). */
      const local = Object.assign(backend, {
        localFile: (key: string): string => {
          const file = path.join(dir, key.replace(/\//g, '_'));
          writeFileSync(file, backend.objects.get(key) ?? Buffer.alloc(0));
          return file;
        },
      });
      const blocks = await storeTwo(local);
      const slot = codec.takeSlot(300 * 1024);
      const viaRange = { getRangeInto: 0 };
      const getRangeInto = backend.getRangeInto.bind(backend);
      backend.getRangeInto = (...a) => (viaRange.getRangeInto++, getRangeInto(...a));
      for (const b of blocks) expect((await new BlockStore(local).read(b.hash, codec, slot)).equals(b.raw)).to.equal(true);
      expect(viaRange.getRangeInto, 'reads through the backend').to.equal(0);
      await expectDamageNamed(local, blocks, slot);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('self-heal: a hash whose only copy is listed damaged is stored again, counted, and read from the new copy', async function () {
    const backend = new MemoryBackend();
    const first = new BlockStore(backend);
    await first.load();
    const b = block();
    const again = Buffer.from(b.encoded); // `add` takes the record's memory
    first.reserve(b.hash);
    await first.add(b.hash, b.encoded);
    await first.flush();
    const key = [...backend.objects.keys()].find((k) => k.startsWith('packs/'))!;
    const pack = key.slice(key.lastIndexOf('/') + 1);
    backend.objects.get(key)![5000] ^= 0xff;
    const hex = b.hash.toString('hex');
    await writeDamagedBlocks(backend, [{ hash: hex, pack, offset: 8, reason: 'crc', detail: 'test', foundAt: new Date().toISOString() }]);
    const healing = new BlockStore(backend);
    await healing.load();
    expect(healing.needsHeal(b.hash)).to.equal(true);
    expect(healing.reserve(b.hash), 'a damaged copy does not count as stored').to.equal(true);
    expect(healing.healed).to.equal(1);
    await healing.add(b.hash, again);
    await healing.flush();
    const later = new BlockStore(backend);
    await later.load();
    expect(later.reserve(b.hash)).to.equal(false);
    expect(later.locate(b.hash)?.pack).to.not.equal(pack);
    expect((await later.read(b.hash, codec)).equals(b.raw)).to.equal(true);
  });

  it('never deduplicates against an index object whose pack file is gone', async function () {
    const backend = new MemoryBackend();
    const first = new BlockStore(backend);
    await first.load();
    const b = block();
    first.reserve(b.hash);
    await first.add(b.hash, b.encoded);
    await first.flush();
    backend.objects.delete([...backend.objects.keys()].find((k) => k.startsWith('packs/'))!);
    const next = new BlockStore(backend);
    await next.load();
    expect(next.reserve(b.hash)).to.equal(true);
    expect(next.healed).to.equal(1);
  });

  it('the pack writer keeps at most two uploads in flight (bounded memory with a slow backend)', async function () {
    let inflight = 0;
    let most = 0;
    const put = async (): Promise<void> => {
      most = Math.max(most, ++inflight);
      await new Promise((r) => setTimeout(r, 20));
      inflight--;
    };
    const w = new PackWriter(put, () => undefined, 1024 * 1024, 2);
    for (let i = 0; i < 40; i++) await w.add(Buffer.alloc(32, i), Buffer.alloc(512 * 1024));
    await w.flush();
    expect(most).to.equal(2); // each slot puts its pack, then its index object
  });
});
