import { expect } from 'chai';
import type { StorageProtection } from '../contracts/repository-backend.js';
import { FerryError } from '../errors.js';
import { prunePoints } from '../maintenance/prune.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { BlockMap } from './block-map.js';
import { Repository, type RestorePoint } from './repository.js';
import { RepositoryStorage } from './repository-storage.js';

const DAY = 86_400_000;

/** A memory backend that records what immutability asked of it. */
class ProtectingBackend extends MemoryBackend {
  readonly protectedKeys = new Set<string>();
  constructor(private readonly answer: StorageProtection = { readOnly: true, immutable: true }) {
    super();
  }
  async protect(keys: string[]): Promise<StorageProtection> {
    for (const k of keys) this.protectedKeys.add(k);
    return this.answer;
  }
  async unprotect(keys: string[]): Promise<void> {
    for (const k of keys) this.protectedKeys.delete(k);
  }
  override async delete(key: string): Promise<void> {
    if (this.protectedKeys.has(key)) throw new FerryError('REPO_IO', `storage refuses to delete protected ${key}`, { object: key });
    await super.delete(key);
  }
}

async function commit(repo: Repository, createdAt: Date): Promise<RestorePoint> {
  const id = Repository.newPointId(createdAt);
  const map = new BlockMap(4096, 4096);
  const disk = { name: 'd0', sizeBytes: 4096, blockSize: 4096, map: '', mapSha256: '', blocks: 1, zeroBlocks: 1, transport: 't', mode: 'full' as const };
  return repo.commitPoint({ id, job: 'j', vm: 'vm1', session: id, createdAt: createdAt.toISOString(), disks: [disk] }, [map]);
}

async function code(p: Promise<unknown>): Promise<string> {
  return p.then(
    () => 'no error',
    (err) => (err instanceof FerryError ? err.code : String(err)),
  );
}

describe('immutability (repository layer)', function () {
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
  it('records the period in the config and refuses a job that asks for another one', async function () {
    const backend = new ProtectingBackend();
    const repo = await Repository.open(backend, { create: true, settings: { immutabilityDays: 7 } });
    expect(repo.config.immutability).to.deep.equal({ days: 7 });
    expect(backend.protectedKeys.has('ferry-repository.json')).to.equal(true);
    expect(await code(Repository.open(backend, { create: false, settings: { immutabilityDays: 30 } }))).to.equal('REPO_SETTINGS_MISMATCH');
    expect((await Repository.open(backend, { create: false })).config.immutability?.days).to.equal(7);
  });

  it('a young point cannot be deleted directly, through the backend, or replaced; an old one can', async function () {
    const backend = new ProtectingBackend();
    const repo = await Repository.open(backend, { create: true, settings: { immutabilityDays: 7 } });
    const young = await commit(repo, new Date(Date.now() - 2 * DAY));
    const old = await commit(repo, new Date(Date.now() - 8 * DAY));
    const key = Repository.pointKey('vm1', young.id);
    expect(backend.protectedKeys.has(key)).to.equal(true);
    expect(backend.protectedKeys.has(young.disks[0].map)).to.equal(true);
    expect(await code(repo.deletePoint(young))).to.equal('REPO_IMMUTABLE');
    expect(await code(repo.backend.delete(key))).to.equal('REPO_IMMUTABLE');
    expect(await code(repo.backend.put(key, Buffer.from('{}')))).to.equal('REPO_IMMUTABLE');
    expect(await code(repo.backend.put(young.disks[0].map, Buffer.from('x')))).to.equal('REPO_IMMUTABLE');
    expect(repo.immutableUntil(young)!.getTime()).to.equal(Date.parse(young.createdAt) + 7 * DAY);
    await repo.deletePoint(old); // lifts the storage's protection first
    expect(await backend.has(Repository.pointKey('vm1', old.id))).to.equal(false);
    expect(await backend.has(old.disks[0].map)).to.equal(false);
    expect((await repo.listPoints()).map((p) => p.id)).to.deep.equal([young.id]);
  });

  it('retention keeps points inside the period and says until when; removes those past it', async function () {
    const repo = await Repository.open(new ProtectingBackend(), { create: true, settings: { immutabilityDays: 10 } });
    const pts = [];
    for (const age of [30, 20, 5, 3, 1]) pts.push(await commit(repo, new Date(Date.now() - age * DAY)));
    const dry = await prunePoints(repo, { job: 'j', vms: ['vm1'], policy: { restorePoints: 1 }, dryRun: true });
    expect(dry.removed.map((p) => p.restorePoint).sort()).to.deep.equal([pts[0].id, pts[1].id].sort());
    const held = dry.kept.filter((p) => p.immutableUntil);
    expect(held.map((p) => p.restorePoint).sort()).to.deep.equal([pts[2].id, pts[3].id].sort());
    expect(held[0].reasons[0]).to.match(/^immutable until \d{4}-\d\d-\d\dT/);
    const real = await prunePoints(repo, { job: 'j', vms: ['vm1'], policy: { restorePoints: 1 } });
    expect(real.removed).to.have.length(2);
    expect((await repo.listPoints()).map((p) => p.id)).to.deep.equal([pts[2].id, pts[3].id, pts[4].id]);
  });

  it('says once when the storage cannot make objects immutable, and still enforces the rule in code', async function () {
    const lines: string[] = [];
    const raw = new ProtectingBackend({ readOnly: true, immutable: false, note: 'no chattr here' });
    const storage = new RepositoryStorage(raw, undefined, 3, false, (l) => lines.push(l));
    await storage.put('points/vm1/20990101T000000Z-aaaaaa/disk-0.map', Buffer.from('m'));
    await storage.put('points/vm1/20990101T000000Z-aaaaaa.json', Buffer.from('{}'));
    expect(lines).to.have.length(1);
    expect(lines[0]).to.match(/no chattr here/);
    expect(await code(storage.delete('points/vm1/20990101T000000Z-aaaaaa.json'))).to.equal('REPO_IMMUTABLE');
  });

  it('a repository without immutability deletes as before and protects nothing', async function () {
    const backend = new ProtectingBackend();
    const repo = await Repository.open(backend, { create: true });
    const p = await commit(repo, new Date());
    expect(backend.protectedKeys.size).to.equal(0);
    await repo.deletePoint(p);
    expect(await repo.listPoints()).to.deep.equal([]);
  });
});
