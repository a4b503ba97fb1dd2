import { expect } from 'chai';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { NoneCompressor } from '../compression/none-compressor.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { InlineBlockCodec } from './block-codec.js';
import { BlockMap } from './block-map.js';
import { cacheRoot } from './index-cache.js';
import { Repository } from './repository.js';

/** Counts the backend's GETs per top-level prefix. */
class CountingBackend extends MemoryBackend {
  gets = new Map<string, number>();
  override async get(key: string): Promise<Uint8Array> {
    const prefix = key.split('/')[0];
    this.gets.set(prefix, (this.gets.get(prefix) ?? 0) + 1);
    return super.get(key);
  }
  indexGets(): number {
    return this.gets.get('index') ?? 0;
  }
}

const none = new NoneCompressor();
const rng = new Prng(5);
const BLOCK = 65536;

async function backup(repo: Repository, blocks: Buffer[]): Promise<void> {
  const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), repo.idKey);
  const map = new BlockMap(blocks.length * BLOCK, BLOCK);
  await repo.blocks.load();
  for (const [i, b] of blocks.entries()) {
    const { hash, encoded } = await codec.encode(b, 'none', 0);
    map.set(i, hash);
    if (repo.blocks.reserve(hash)) await repo.blocks.add(hash, encoded);
  }
  const id = Repository.newPointId();
  const disk = { name: 'd0', sizeBytes: map.diskSize, blockSize: BLOCK, map: '', mapSha256: '', blocks: blocks.length, zeroBlocks: 0, transport: 'test', mode: 'full' as const };
  await repo.commitPoint({ id, job: 'j', vm: 'vm1', session: id, createdAt: new Date().toISOString(), disks: [disk] }, [map]);
}

describe('local index cache', function () {
  // These cases check format 1's own layout (per-pack index objects, protect/unprotect); format 2's
  // counterparts are in block-store-v2.spec, retain-until.spec and test/src/format2.spec.
  const formatBefore = process.env.FERRY_REPOSITORY_FORMAT;
  before(() => {
    process.env.FERRY_REPOSITORY_FORMAT = '1';
  });
  after(() => {
    if (formatBefore === undefined) delete process.env.FERRY_REPOSITORY_FORMAT;
    else process.env.FERRY_REPOSITORY_FORMAT = formatBefore;
  });
  let saved: string | undefined;
  let dir: string;
  beforeEach(function () {
    saved = process.env.FERRY_CACHE_DIR;
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-cache-spec-'));
    process.env.FERRY_CACHE_DIR = dir;
  });
  afterEach(function () {
    if (saved === undefined) delete process.env.FERRY_CACHE_DIR;
    else process.env.FERRY_CACHE_DIR = saved;
    rmSync(dir, { recursive: true, force: true });
  });

  const blocks = Array.from({ length: 40 }, () => rng.fill(Buffer.alloc(BLOCK)));

  async function seeded(): Promise<{ backend: CountingBackend; repoId: string }> {
    const backend = new CountingBackend();
    const repo = await Repository.open(backend, { create: true });
    // Two sessions: two packs, two index objects.
    await backup(repo, blocks.slice(0, 20));
    await backup(repo, blocks);
    return { backend, repoId: repo.id };
  }

  it('lives under FERRY_CACHE_DIR, else XDG_CACHE_HOME/ferry, else ~/.cache/ferry', function () {
    expect(cacheRoot({ FERRY_CACHE_DIR: '/x', XDG_CACHE_HOME: '/y' })).to.equal('/x');
    expect(cacheRoot({ XDG_CACHE_HOME: '/y' })).to.equal('/y/ferry');
    expect(cacheRoot({})).to.equal(path.join(os.homedir(), '.cache', 'ferry'));
  });

  it('a second backup with a warm cache reads no index object, and dedups as before', async function () {
    const { backend } = await seeded();
    const indexObjects = [...backend.objects.keys()].filter((k) => k.startsWith('index/')).length;
    expect(indexObjects).to.be.greaterThan(0);
    backend.gets.clear();
    const second = await Repository.open(backend, { create: false });
    const puts = backend.puts;
    await backup(second, [...blocks, rng.fill(Buffer.alloc(BLOCK))]);
    expect(backend.indexGets()).to.equal(0);
    expect(second.blocks.indexReads).to.equal(0);
    // Only the one new block was stored: one pack, one index object, one map, one manifest.
    expect(backend.puts - puts).to.equal(4);
    // The index object the second backup wrote was cached when written: a third run reads none either.
    const third = await Repository.open(backend, { create: false });
    await third.blocks.load();
    expect(backend.indexGets()).to.equal(0);
    expect(await third.blocks.has((await new InlineBlockCodec(() => none).encode(blocks[3], 'none', 0)).hash)).to.equal(true);
  });

  it('a cold cache reads every index object once; another cache folder is cold again', async function () {
    const { backend } = await seeded();
    const indexObjects = [...backend.objects.keys()].filter((k) => k.startsWith('index/')).length;
    process.env.FERRY_CACHE_DIR = path.join(dir, 'other');
    backend.gets.clear();
    const repo = await Repository.open(backend, { create: false });
    await repo.blocks.load();
    expect(backend.indexGets()).to.equal(indexObjects);
  });

  it('detects a tampered cache file by its hash and reads that object from the repository', async function () {
    const { backend, repoId } = await seeded();
    const objects = path.join(dir, repoId, 'objects', 'index');
    const sub = readdirSync(objects)[0];
    const file = path.join(objects, sub, readdirSync(path.join(objects, sub))[0]);
    const bytes = readFileSync(file);
    bytes[bytes.length - 10] ^= 1;
    writeFileSync(file, bytes);
    // Also a damaged snapshot: the index is rebuilt from the cached objects.
    const snap = path.join(dir, repoId, 'index.snapshot');
    const s = readFileSync(snap);
    s[100] ^= 1;
    writeFileSync(snap, s);
    backend.gets.clear();
    const repo = await Repository.open(backend, { create: false });
    await repo.blocks.load();
    expect(backend.indexGets()).to.equal(1);
    const codec = new InlineBlockCodec(() => none);
    for (const b of blocks) expect(await repo.blocks.has((await codec.encode(b, 'none', 0)).hash)).to.equal(true);
  });

  it('forgets cached objects whose key is no longer listed (gc took the index object away)', async function () {
    const { backend, repoId } = await seeded();
    const codec = new InlineBlockCodec(() => none);
    const hash = (await codec.encode(blocks[0], 'none', 0)).hash;
    const first = await Repository.open(backend, { create: false });
    await first.blocks.load();
    const pack = first.blocks.locate(hash)!.pack;
    backend.objects.delete(`index/${pack.slice(0, 2)}/${pack}`);
    const repo = await Repository.open(backend, { create: false });
    expect(await repo.blocks.has(hash)).to.equal(false);
    expect(readdirSync(path.join(dir, repoId, 'objects', 'index'), { recursive: true }).map(String).some((f) => f.endsWith(pack))).to.equal(false);
  });

  it('an encrypted repository caches sealed objects only (no plaintext snapshot) and still reads none warm', async function () {
    const backend = new CountingBackend();
    const passphrase = { describe: 'test', read: async (): Promise<string> => 'pw' };
    const opts = { passphrase, scrypt: { N: 2 ** 12, r: 8, p: 1 } };
    const repo = await Repository.open(backend, { create: true, settings: { encrypted: true }, ...opts });
    await backup(repo, blocks.slice(0, 10));
    backend.gets.clear();
    const again = await Repository.open(backend, { create: false, ...opts });
    await again.blocks.load();
    expect(backend.indexGets()).to.equal(0);
    expect(readdirSync(path.join(dir, repo.id))).to.not.include('index.snapshot');
    for (const f of readdirSync(path.join(dir, repo.id, 'objects'), { recursive: true, withFileTypes: true }).filter((d) => d.isFile())) {
      expect(readFileSync(path.join(f.parentPath, f.name)).subarray(32, 36).toString()).to.equal('FENC');
    }
  });

  it('a cache folder that cannot be written costs one warning, never the backup', async function () {
    writeFileSync(path.join(dir, 'not-a-folder'), 'x');
    process.env.FERRY_CACHE_DIR = path.join(dir, 'not-a-folder');
    const backend = new CountingBackend();
    const repo = await Repository.open(backend, { create: true });
    const lines: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string): boolean => (lines.push(String(chunk)), true)) as typeof process.stderr.write;
    try {
      await backup(repo, blocks.slice(0, 4));
      await backup(repo, blocks.slice(0, 8));
    } finally {
      process.stderr.write = write;
    }
    expect(lines.filter((l) => l.includes('index cache')).length).to.equal(1);
    const again = await Repository.open(backend, { create: false });
    const codec = new InlineBlockCodec(() => none);
    for (const b of blocks.slice(0, 8)) expect(await again.blocks.has((await codec.encode(b, 'none', 0)).hash)).to.equal(true);
  });
});
