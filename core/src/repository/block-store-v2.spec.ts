import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NoneCompressor } from '../compression/none-compressor.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { InlineBlockCodec } from './block-codec.js';
import { BlockStore } from './block-store.js';
import { IndexCache } from './index-cache.js';
import { encodeIndex, packFormat, readPackTrailer } from './pack.js';
import { RepositoryCipher } from './repository-cipher.js';
import { newMasterKeys } from './repository-keys.js';
import { RepositoryStorage } from './repository-storage.js';

/** Counts GETs per top-level prefix and records every listing. */
class CountingBackend extends MemoryBackend {
  gets = new Map<string, number>();
  lists: string[] = [];
  override async get(key: string): Promise<Uint8Array> {
    const prefix = key.split('/')[0];
    this.gets.set(prefix, (this.gets.get(prefix) ?? 0) + 1);
    return super.get(key);
  }
  override list(prefix: string): AsyncIterable<string> {
    this.lists.push(prefix);
    return super.list(prefix);
  }
  keysUnder(prefix: string): string[] {
    return [...this.objects.keys()].filter((k) => k.startsWith(prefix));
  }
}

const none = new NoneCompressor();
const rng = new Prng(21);
const blocks = Array.from({ length: 30 }, () => rng.fill(Buffer.alloc(65536)));

describe('block store, format 2 (consolidated index objects)', function () {
  let dir: string;
  beforeEach(function () {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-v2-spec-'));
  });
  afterEach(function () {
    rmSync(dir, { recursive: true, force: true });
  });

  function store(backend: CountingBackend, cacheDir: string | undefined, cipher?: RepositoryCipher): BlockStore {
    const storage = new RepositoryStorage(backend, cipher, undefined);
    return new BlockStore(storage, undefined, cipher, cacheDir ? new IndexCache(cacheDir) : undefined, 2);
  }

  async function session(s: BlockStore, data: Buffer[], cipher?: RepositoryCipher): Promise<Buffer[]> {
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), cipher?.idKey);
    await s.load();
    const hashes: Buffer[] = [];
    for (const b of data) {
      const { hash, encoded } = await codec.encode(b, 'none', 0);
      hashes.push(hash);
      if (s.reserve(hash)) await s.add(hash, encoded);
    }
    await s.flush();
    return hashes;
  }

  it('writes version 2 packs and one index object per flush, named by its hash; no per-pack index objects', async function () {
    const backend = new CountingBackend();
    const s = store(backend, path.join(dir, 'c'));
    await session(s, blocks.slice(0, 10));
    await session(s, blocks.slice(5, 20)); // a second commit: a second index object for the new pack
    expect(backend.keysUnder('index/')).to.deep.equal([]);
    const objects = backend.keysUnder('indexes/');
    expect(objects.length).to.equal(2);
    for (const k of objects) expect(createHash('sha256').update(backend.objects.get(k)!).digest('hex')).to.equal(k.slice('indexes/'.length));
    for (const k of backend.keysUnder('packs/')) expect(packFormat(backend.objects.get(k)!)).to.equal(2);
  });

  it('a warm open lists only indexes/ and gc/condemned/ and GETs no index object; a cold one GETs each once', async function () {
    const backend = new CountingBackend();
    const hashes = await session(store(backend, path.join(dir, 'c')), blocks);
    await session(store(backend, path.join(dir, 'c')), blocks.slice(0, 3)); // all duplicates: no new object
    expect(backend.keysUnder('indexes/').length).to.equal(1);
    backend.gets.clear();
    backend.lists = [];
    const warm = store(backend, path.join(dir, 'c'));
    await warm.load();
    expect(backend.lists.sort()).to.deep.equal(['gc/condemned/', 'indexes/']);
    expect(backend.gets.get('indexes') ?? 0).to.equal(0);
    for (const h of hashes) expect(await warm.has(h)).to.equal(true);
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined));
    expect((await warm.read(hashes[7], codec)).equals(blocks[7])).to.equal(true);
    backend.gets.clear();
    const cold = store(backend, path.join(dir, 'other'));
    await cold.load();
    expect(backend.gets.get('indexes')).to.equal(1);
    for (const h of hashes) expect(await cold.has(h)).to.equal(true);
  });

  it('an index object that does not hash to its name is refused: its blocks count as not stored', async function () {
    const backend = new CountingBackend();
    const hashes = await session(store(backend, undefined), blocks.slice(0, 5));
    const [key] = backend.keysUnder('indexes/');
    backend.objects.get(key)![20] ^= 1;
    const s = store(backend, path.join(dir, 'cold'));
    await s.load();
    expect(s.badIndexes.map((b) => b.key)).to.deep.equal([key]);
    expect(await s.has(hashes[0])).to.equal(false);
  });

  it('a condemned pack is never deduplicated against but still read', async function () {
    const backend = new CountingBackend();
    const hashes = await session(store(backend, path.join(dir, 'c')), blocks.slice(0, 5));
    const [packKey] = backend.keysUnder('packs/');
    const id = packKey.slice(packKey.lastIndexOf('/') + 1);
    backend.objects.set(`gc/condemned/${id.slice(0, 2)}/${id}`, encodeIndex(id, readPackTrailer(backend.objects.get(packKey)!, packKey)));
    const s = store(backend, path.join(dir, 'c'));
    await s.load();
    expect(await s.has(hashes[0])).to.equal(false);
    expect(s.locate(hashes[0])?.pack).to.equal(id);
  });

  it('encrypted: index objects are sealed, named by the hash of the sealed bytes, and cached sealed', async function () {
    const cipher = new RepositoryCipher(newMasterKeys());
    const backend = new CountingBackend();
    const hashes = await session(store(backend, path.join(dir, 'c'), cipher), blocks.slice(0, 8), cipher);
    const [key] = backend.keysUnder('indexes/');
    expect(backend.objects.get(key)!.subarray(0, 4).toString()).to.equal('FENC');
    backend.gets.clear();
    const warm = store(backend, path.join(dir, 'c'), cipher);
    await warm.load();
    expect(backend.gets.get('indexes') ?? 0).to.equal(0);
    for (const h of hashes) expect(await warm.has(h)).to.equal(true);
    const cold = store(backend, path.join(dir, 'cold'), cipher);
    await cold.load();
    for (const h of hashes) expect(await cold.has(h)).to.equal(true);
  });
});
