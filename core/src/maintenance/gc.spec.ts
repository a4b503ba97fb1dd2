import { expect } from 'chai';
import { NoneCompressor } from '../compression/none-compressor.js';
import { FerryError } from '../errors.js';
import { encodeRawBlock, InlineBlockCodec } from '../repository/block-codec.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { BlockMap } from '../repository/block-map.js';
import { indexKey, packKey } from '../repository/pack-writer.js';
import { sealPack } from '../repository/pack.js';
import { Repository, type RestorePoint } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import { runGc } from './gc.js';
import { runVerify } from './verify.js';

const BLOCK = 256 * 1024;
const none = new NoneCompressor();
const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined));

function blocks(seed: number, n: number): Buffer[] {
  const rng = new Prng(seed);
  return Array.from({ length: n }, () => rng.fill(Buffer.alloc(BLOCK)));
}

/** Format of the repositories the tests below create (each `describe` runs once per format). */
let FORMAT: 1 | 2 = 1;
const open = (backend: MemoryBackend, create = false): Promise<Repository> => Repository.open(backend, { create, settings: { format: FORMAT } });
const gcKeys = (b: MemoryBackend): string[] => keys(b, FORMAT === 2 ? 'mutable/gc/' : 'gc/');

/** A backup session in miniature: lock, load the index, dedup or store each block, commit. */
async function session(backend: MemoryBackend, vm: string, data: Buffer[], hold?: (lock: RepositoryLock, repo: Repository) => Promise<void>): Promise<{ point: RestorePoint; stored: number }> {
  const repo = await open(backend, true);
  const lock = await RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: [vm] });
  try {
    await repo.blocks.load();
    const map = new BlockMap(data.length * BLOCK, BLOCK);
    let stored = 0;
    for (const [i, raw] of data.entries()) {
      const { hash, encoded } = encodeRawBlock(raw, 'none', none, 0);
      map.set(i, hash);
      if (repo.blocks.reserve(hash)) {
        await repo.blocks.add(hash, encoded);
        stored++;
      }
    }
    await hold?.(lock, repo);
    const id = Repository.newPointId();
    const disk = { name: 'd.raw', sizeBytes: map.diskSize, blockSize: BLOCK, blocks: map.blockCount, zeroBlocks: 0, transport: 't', mode: 'full' as const };
    const point = await repo.commitPoint({ id, job: 'j', vm, session: id, createdAt: new Date().toISOString(), disks: [disk as never] }, [map]);
    return { point, stored };
  } finally {
    await lock.release();
  }
}

/** Every block of the point reads back and matches, through a freshly opened repository. */
async function expectRestorable(backend: MemoryBackend, point: RestorePoint, data: Buffer[]): Promise<void> {
  const repo = await Repository.open(backend, { create: false });
  const map = await repo.readMap(point.disks[0]);
  for (let i = 0; i < map.blockCount; i++) expect((await repo.blocks.read(map.get(i)!, codec)).equals(data[i]), `block ${i}`).to.equal(true);
}

const keys = (b: MemoryBackend, prefix: string): string[] => [...b.objects.keys()].filter((k) => k.startsWith(prefix));

for (const format of [1, 2] as const) describe(`garbage collection (format ${format})`, function () {
  this.timeout(30_000);
  before(() => (FORMAT = format));
  it('deletes packs nothing needs, rewrites mostly unused ones, and every kept point still restores', async function () {
    const backend = new MemoryBackend();
    const a = blocks(1, 120);
    const b = [...a.slice(0, 10), ...blocks(2, 50)];
    const pa = await session(backend, 'vm1', a);
    const pb = await session(backend, 'vm1', b);
    const repo = await open(backend);
    await repo.deletePoint(pa.point);
    const before = keys(backend, 'packs/').length;
    const r = await runGc(await open(backend), { graceMs: 0 });
    expect(r.packs.unused + r.packs.rewritten, JSON.stringify(r)).to.be.at.least(1);
    expect(r.deletedPacks).to.equal(r.condemnedPacks);
    expect(r.bytesReclaimed).to.be.greaterThan(60 * BLOCK);
    expect(keys(backend, 'packs/').length).to.be.lessThan(before);
    expect(gcKeys(backend)).to.deep.equal([]);
    await expectRestorable(backend, pb.point, b);
  });

  it('a session that deduplicated against a pack before gc condemned it: its point restores, and gc puts the pack back', async function () {
    const backend = new MemoryBackend();
    const data = blocks(3, 30);
    const first = await session(backend, 'vm1', data);
    await (await open(backend)).deletePoint(first.point); // all 30 blocks are now garbage
    let gcWhileRunning: Awaited<ReturnType<typeof runGc>> | undefined;
    const second = await session(backend, 'vm2', data, async () => {
      gcWhileRunning = await runGc(await open(backend), { graceMs: 0 });
    });
    expect(second.stored, 'the session deduplicated every block').to.equal(0);
    expect(gcWhileRunning!.condemnedPacks).to.be.at.least(1);
    expect(gcWhileRunning!.deletedPacks, 'nothing is deleted while the session runs').to.equal(0);
    expect(gcWhileRunning!.pending.waitingFor[0]).to.include('backup of vm vm2');
    await expectRestorable(backend, second.point, data); // read from the condemned packs meanwhile
    const after = await runGc(await open(backend), { graceMs: 0 });
    expect(after.resurrectedPacks).to.equal(gcWhileRunning!.condemnedPacks);
    expect(after.deletedPacks).to.equal(0);
    expect(gcKeys(backend)).to.deep.equal([]);
    await expectRestorable(backend, second.point, data);
  });

  it('a session that starts after the condemnation stores the blocks anew; the condemned packs then go', async function () {
    const backend = new MemoryBackend();
    const data = blocks(4, 20);
    const first = await session(backend, 'vm1', data);
    await (await open(backend)).deletePoint(first.point);
    const reader = await RepositoryLock.acquire((await open(backend)).backend, { operation: 'restore', vms: ['other'] });
    const g1 = await runGc(await open(backend), { graceMs: 0 });
    expect(g1.pending.packs).to.equal(g1.condemnedPacks); // a restore runs: nothing is swept
    const late = await session(backend, 'vm2', data);
    expect(late.stored, 'condemned packs are never deduplicated against').to.equal(20);
    await reader.release();
    const g2 = await runGc(await open(backend), { graceMs: 0 });
    expect(g2.deletedPacks).to.equal(g1.condemnedPacks);
    await expectRestorable(backend, late.point, data);
  });

  if (format === 2) {
    it('merges the index objects it read, leaving out the deleted packs, and deletes the merged ones', async function () {
      const backend = new MemoryBackend();
      const a = blocks(7, 40);
      const b = blocks(8, 40);
      const pa = await session(backend, 'vm1', a);
      const pb = await session(backend, 'vm1', b);
      expect(keys(backend, 'indexes/').length).to.equal(2);
      await (await open(backend)).deletePoint(pa.point);
      const r = await runGc(await open(backend), { graceMs: 0 });
      expect(r.deletedPacks).to.be.at.least(1);
      expect(r.indexObjectsMerged, 'the object of the deleted pack').to.be.at.least(1);
      expect(keys(backend, 'indexes/').length).to.equal(1);
      expect(keys(backend, 'index/'), 'no format 1 index object').to.deep.equal([]);
      expect(gcKeys(backend)).to.deep.equal([]);
      await expectRestorable(backend, pb.point, b);
      const again = await session(backend, 'vm2', a);
      expect(again.stored, 'the deleted blocks are stored anew, never deduplicated against').to.equal(40);
    });
    it('opening lists again when an index object it listed is gone by its GET (merged by a gc meanwhile)', async function () {
      const backend = new MemoryBackend();
      const a = blocks(10, 4);
      const pa = await session(backend, 'vm1', a);
      let phantom = true;
      const list = backend.list.bind(backend);
      backend.list = async function* (prefix: string) {
        if (prefix === 'indexes/' && phantom) {
          phantom = false;
          yield `indexes/${'0'.repeat(64)}`;
        }
        yield* list(prefix);
      };
      await expectRestorable(backend, pa.point, a);
      expect(phantom).to.equal(false);
    });
    it('verify indexes the packs of a damaged index object again from their trailers, and drops it', async function () {
      const backend = new MemoryBackend();
      const a = blocks(9, 12);
      const pa = await session(backend, 'vm1', a);
      const [damaged] = keys(backend, 'indexes/');
      const bytes = Buffer.from(backend.objects.get(damaged)!);
      bytes[30] ^= 0x10;
      backend.objects.set(damaged, bytes);
      const v = await runVerify(await open(backend), codec);
      expect(v.status, JSON.stringify([v.repairedObjects, v.damagedObjects])).to.equal('ok');
      expect(v.repairedObjects).to.have.length(1);
      expect(keys(backend, 'indexes/')).to.deep.equal([v.repairedObjects[0].object]);
      await expectRestorable(backend, pa.point, a);
    });
  }
});

describe('garbage collection (format 1 details)', function () {
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
  this.timeout(30_000);
  before(() => (FORMAT = 1));
  it('a pack whose index object is not written yet is left alone while its session runs', async function () {
    const backend = new MemoryBackend();
    await Repository.open(backend, { create: true });
    const lock = await RepositoryLock.acquire(backend, { operation: 'backup', vms: ['vm1'] });
    const raw = blocks(5, 2).map((x) => ({ ...encodeRawBlock(x, 'none', none, 0) }));
    const pack = sealPack(raw);
    await backend.put(packKey(pack.id), pack.bytes); // the session's next put would be the index object
    const g = await runGc(await Repository.open(backend, { create: false }), { graceMs: 0 });
    expect(g.packs.orphaned).to.equal(1);
    expect(g.deletedPacks).to.equal(0);
    expect(await backend.has(packKey(pack.id))).to.equal(true);
    await backend.put(indexKey(pack.id), (await import('../repository/pack.js')).encodeIndex(pack.id, pack.entries));
    await lock.release();
    const g2 = await runGc(await Repository.open(backend, { create: false }), { graceMs: 0 });
    expect(await backend.has(packKey(pack.id)), JSON.stringify(g2)).to.equal(true); // its index came: not an orphan
  });

  it('is refused while a prune runs, and removes maps of uncommitted points only after the grace period', async function () {
    const backend = new MemoryBackend();
    const data = blocks(6, 3);
    await session(backend, 'vm1', data);
    const prune = await RepositoryLock.acquire(backend, { operation: 'prune', vms: ['vm1'] });
    const err = await runGc(await Repository.open(backend, { create: false })).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_LOCKED');
    await prune.release();
    await backend.put('points/vm1/20200101T000000Z-aaaaaa/disk-0.map', Buffer.from('left by a killed session'));
    await backend.put(`points/vm1/${Repository.newPointId()}/disk-0.map`, Buffer.from('a session writing right now'));
    const g = await runGc(await Repository.open(backend, { create: false }), { graceMs: 3_600_000 });
    expect(g.uncommittedMapsRemoved).to.equal(1);
    expect(keys(backend, 'points/').length).to.equal(3); // the point's manifest and map, and the young map
  });
});
