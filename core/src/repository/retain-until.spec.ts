import { expect } from 'chai';
import type { StorageProtection } from '../contracts/repository-backend.js';
import { NoneCompressor } from '../compression/none-compressor.js';
import { FerryError } from '../errors.js';
import { runGc } from '../maintenance/gc.js';
import { upgradeRepository } from '../maintenance/upgrade.js';
import { prunePoints } from '../maintenance/prune.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { encodeRawBlock } from './block-codec.js';
import { BlockMap } from './block-map.js';
import { packKey } from './pack-writer.js';
import { Repository, type RestorePoint } from './repository.js';

const DAY = 86_400_000;
const BLOCK = 64 * 1024;
const none = new NoneCompressor();

/** A memory backend with retain-until dates as the contract describes them (never shortened, no lift). */
class RetainingBackend extends MemoryBackend {
  readonly dates = new Map<string, number>();
  unprotectCalls = 0;
  async retain(keys: string[], until: Date): Promise<StorageProtection> {
    for (const k of keys) if ((this.dates.get(k) ?? 0) < until.getTime()) this.dates.set(k, until.getTime());
    return { readOnly: true, immutable: true };
  }
  async retainedUntil(key: string): Promise<Date | undefined> {
    const t = this.dates.get(key);
    return t === undefined ? undefined : new Date(t);
  }
  async unprotect(): Promise<void> {
    this.unprotectCalls++;
  }
  override async delete(key: string): Promise<void> {
    const t = this.dates.get(key);
    if (t !== undefined && t > Date.now()) throw new FerryError('REPO_IMMUTABLE', `${key} is retained until ${new Date(t).toISOString()}`, { object: key });
    await super.delete(key);
  }
}

function blocks(seed: number, n: number): Buffer[] {
  const rng = new Prng(seed);
  return Array.from({ length: n }, () => rng.fill(Buffer.alloc(BLOCK)));
}

/** A session in miniature whose point id says it started at `at`. */
async function commit(backend: MemoryBackend, at: Date, data: Buffer[], format: 1 | 2 = 2): Promise<RestorePoint> {
  const repo = await Repository.open(backend, { create: true, settings: { format, immutabilityDays: 1 } });
  await repo.blocks.load();
  const map = new BlockMap(data.length * BLOCK, BLOCK);
  for (const [i, raw] of data.entries()) {
    const { hash, encoded } = encodeRawBlock(raw, 'none', none, 0);
    map.set(i, hash);
    if (repo.blocks.reserve(hash)) await repo.blocks.add(hash, encoded);
  }
  const id = Repository.newPointId(at);
  const disk = { name: 'd.raw', sizeBytes: map.diskSize, blockSize: BLOCK, blocks: map.blockCount, zeroBlocks: 0, transport: 't', mode: 'full' as const };
  return repo.commitPoint({ id, job: 'j', vm: 'vm1', session: id, createdAt: at.toISOString(), disks: [disk as never] }, [map]);
}

async function code(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'no error',
    (err) => (err instanceof FerryError ? err.code : String(err)),
  );
}

const packsOf = (b: MemoryBackend): string[] => [...b.objects.keys()].filter((k) => k.startsWith('packs/'));
const open = (b: MemoryBackend): Promise<Repository> => Repository.open(b, { create: false });

describe('retain-until dates (format 2 immutability)', function () {
  this.timeout(30_000);

  it('a point inside its period has dates on every object it needs and cannot be forgotten or pruned', async function () {
    const backend = new RetainingBackend();
    const p = await commit(backend, new Date(), blocks(1, 8));
    expect(Date.parse(p.retainUntil!)).to.be.greaterThan(Date.now());
    expect(Date.parse(p.retainUntil!) % DAY, 'a UTC midnight').to.equal(0);
    for (const key of [Repository.pointKey('vm1', p.id), p.disks[0].map, ...packsOf(backend), ...[...backend.objects.keys()].filter((k) => k.startsWith('indexes/'))]) {
      expect(backend.dates.get(key) ?? 0, key).to.be.at.least(Date.parse(p.retainUntil!));
    }
    const repo = await open(backend);
    const err = await repo.deletePoint(p).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_IMMUTABLE');
    expect((err as FerryError).message).to.include(p.retainUntil!);
    const pruned = await prunePoints(repo, { job: 'j', vms: ['vm1'], policy: { restorePoints: 0 } as never });
    expect(pruned.removed).to.deep.equal([]);
    expect(backend.unprotectCalls, 'format 2 never lifts a date').to.equal(0);
  });

  it('a new point that reuses an older pack extends that pack; gc keeps a forgotten point\'s packs until their date', async function () {
    const backend = new RetainingBackend();
    const shared = blocks(2, 6);
    const old = await commit(backend, new Date(Date.now() - 20 * DAY), shared);
    const [pack] = packsOf(backend);
    const before = backend.dates.get(pack)!;
    expect(before, 'the old point\'s date has passed').to.be.lessThan(Date.now());
    const young = await commit(backend, new Date(), shared); // deduplicates: stores nothing new
    expect(packsOf(backend)).to.deep.equal([pack]);
    expect(backend.dates.get(pack)!, 'extended past the young point\'s date').to.be.at.least(Date.parse(young.retainUntil!) + 7 * DAY);
    expect([...backend.objects.keys()].some((k) => k.startsWith('retention/'))).to.equal(true);

    // A point from 3 days ago: its own date has passed, but its new packs were given the date plus 7 days.
    const recent = await commit(backend, new Date(Date.now() - 3 * DAY), blocks(3, 6));
    const recentPack = packsOf(backend).find((k) => k !== pack)!;
    await (await open(backend)).deletePoint(old);
    await (await open(backend)).deletePoint(recent);
    const g = await runGc(await open(backend), { graceMs: 0 });
    expect(g.retainedUntil?.packs, JSON.stringify(g)).to.equal(1);
    expect(Date.parse(g.retainedUntil!.until)).to.be.greaterThan(Date.now());
    expect(g.condemnedPacks).to.equal(0);
    expect(await backend.has(recentPack), 'not deleted before its date').to.equal(true);
    expect(await code((await open(backend)).deletePoint(young))).to.equal('REPO_IMMUTABLE');
    expect(await backend.has(pack)).to.equal(true);
    expect(await backend.has(packKey(pack.slice(pack.lastIndexOf('/') + 1)))).to.equal(true);
  });

  it('an upgrade of an immutable version 1 repository gives its objects dates instead of liftable protection', async function () {
    const backend = new RetainingBackend();
    const old = await commit(backend, new Date(Date.now() - 5 * DAY), blocks(4, 3), 1);
    const young = await commit(backend, new Date(), blocks(5, 3), 1);
    const report = await upgradeRepository(await open(backend));
    expect(report.objectsRetained).to.be.at.least(6);
    const repo = await open(backend);
    expect(repo.format).to.equal(2);
    expect(backend.dates.get(young.disks[0].map)).to.be.greaterThan(Date.now());
    for (const k of packsOf(backend)) expect(backend.dates.get(k), k).to.be.greaterThan(Date.now());
    await repo.deletePoint(old); // its date has passed: the storage lets it go
    expect(await code(repo.deletePoint(young))).to.equal('REPO_IMMUTABLE');
  });
});
