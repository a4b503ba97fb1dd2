import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import { BlockCache } from './block-cache.js';
import { FileImage } from './file-image.js';
import { PointReader, type BlockSource } from './point-reader.js';

const BS = 4096;

/** A disk of `blocks` blocks (last one `tail` bytes) where every third block is a zero block. */
function fixture(blocks: number, tail = BS): { disk: Buffer; map: BlockMap; store: Map<string, Buffer> } {
  const size = (blocks - 1) * BS + tail;
  const disk = Buffer.alloc(size);
  const map = new BlockMap(size, BS);
  const store = new Map<string, Buffer>();
  for (let i = 0; i < blocks; i++) {
    if (i % 3 === 1) continue;
    const block = disk.subarray(i * BS, Math.min(size, (i + 1) * BS));
    for (let j = 0; j < block.length; j++) block[j] = (i * 7 + j) & 0xff || 1;
    const hash = createHash('sha256').update(block).digest();
    map.set(i, hash);
    store.set(hash.toString('hex'), Buffer.from(block));
  }
  return { disk, map, store };
}

function source(store: Map<string, Buffer>, reads: string[] = []): BlockSource {
  return {
    read: async (hash) => {
      reads.push(hash.toString('hex'));
      await new Promise((r) => setImmediate(r));
      const b = store.get(hash.toString('hex'));
      if (!b) throw new FerryError('REPO_OBJECT_NOT_FOUND', 'gone');
      return Buffer.from(b);
    },
    close: async () => undefined,
  };
}

describe('PointReader', () => {
  it('reads any range byte-identical, zero blocks without repository reads', async () => {
    const { disk, map, store } = fixture(10, 1000);
    const reads: string[] = [];
    const r = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, source(store, reads), { readAhead: 0 });
    for (const [off, len] of [[0, disk.length], [1, 1], [BS - 3, 10], [BS, BS], [5 * BS + 17, 3 * BS], [disk.length - 5, 5], [disk.length, 0]]) {
      expect((await r.read(off, len)).equals(disk.subarray(off, off + len)), `${off}+${len}`).to.equal(true);
    }
    await r.read(BS, BS); // block 1: a zero block
    expect(reads.every((h) => store.has(h))).to.equal(true);
    expect(r.figures.blocksFetched).to.equal(store.size); // each block fetched once (cache)
  });

  it('shares one fetch between concurrent readers and respects the cache bound', async () => {
    const { map, store } = fixture(30);
    const reads: string[] = [];
    const r = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, source(store, reads), { cacheBytes: 4 * BS, readAhead: 0 });
    await Promise.all([r.read(0, BS), r.read(0, BS), r.read(10, 20)]);
    expect(reads.length).to.equal(1);
    await r.read(0, 30 * BS);
    expect(r.figures.cacheBytes).to.be.at.most(4 * BS);
    reads.length = 0;
    await r.read(0, BS); // evicted long ago
    expect(reads.length).to.equal(1);
  });

  it('reads ahead for a sequential reader', async () => {
    const { map, store } = fixture(40);
    const reads: string[] = [];
    const r = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, source(store, reads), { readAhead: 4 });
    await r.read(0, BS);
    await r.read(BS, BS);
    await new Promise((res) => setTimeout(res, 20));
    expect(reads.length).to.be.greaterThan(2);
  });

  it('reports allocation: zero blocks are holes, merged', () => {
    const { map, store } = fixture(4, 100);
    const r = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, source(store));
    expect(r.allocation(0, r.size)).to.deep.equal([
      { offset: 0, length: BS, zero: false },
      { offset: BS, length: BS, zero: true },
      { offset: 2 * BS, length: BS + 100, zero: false },
    ]);
    expect(r.allocation(10, 5)).to.deep.equal([{ offset: 10, length: 5, zero: false }]);
  });

  it('refuses reads beyond the disk and blocks of the wrong length', async () => {
    const { map, store } = fixture(3);
    const r = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, source(store));
    await r.read(3 * BS - 1, 2).then(
      () => expect.fail('read past the end'),
      (err) => expect(err.code).to.equal('READ_OUT_OF_RANGE'),
    );
    const short = new PointReader({ vm: 'v', disk: 'd', id: 'p' }, map, { read: async () => Buffer.alloc(10), close: async () => undefined });
    await short.read(0, 1).then(
      () => expect.fail('short block'),
      (err) => expect([err.code, err.where.offset]).to.deep.equal(['REPO_CORRUPT_OBJECT', 0]),
    );
  });

  it('FileImage reads a local raw file the same way', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-file-image-'));
    try {
      const { disk } = fixture(5, 77);
      writeFileSync(path.join(dir, 'd.raw'), disk);
      const img = await FileImage.open(path.join(dir, 'd.raw'));
      expect(img.size).to.equal(disk.length);
      expect((await img.read(BS - 5, 3 * BS)).equals(disk.subarray(BS - 5, 4 * BS - 5))).to.equal(true);
      expect(img.allocation(0, img.size + 10)).to.deep.equal([{ offset: 0, length: disk.length, zero: false }]);
      await img.read(disk.length - 1, 2).then(
        () => expect.fail('read past the end'),
        (err) => expect(err.code).to.equal('READ_OUT_OF_RANGE'),
      );
      await img.close();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('does not cache a failed fetch', async () => {
    const cache = new BlockCache(1 << 20);
    let n = 0;
    const load = async (): Promise<Buffer> => {
      if (n++ === 0) throw new Error('flaky');
      return Buffer.from('x');
    };
    await cache.get('k', load).catch(() => undefined);
    expect((await cache.get('k', load)).toString()).to.equal('x');
  });
});
