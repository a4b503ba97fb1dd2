import { expect } from 'chai';
import { NoneCompressor } from '../compression/none-compressor.js';
import { InlineBlockCodec } from '../repository/block-codec.js';
import { BlockMap } from '../repository/block-map.js';
import { readDamagedBlocks, writeDamagedBlocks } from '../repository/damaged-blocks.js';
import { Repository, type PassphraseSource, type RestorePoint } from '../repository/repository.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { runGc } from './gc.js';
import { upgradeRepository } from './upgrade.js';
import { runVerify } from './verify.js';

const FAST = { N: 2 ** 12, r: 8, p: 1 };
const BLOCK = 64 * 1024;
const none = new NoneCompressor();
const pass: PassphraseSource = { describe: 'test passphrase', read: async () => 'correct horse' };
const open = (b: MemoryBackend): Promise<Repository> => Repository.open(b, { create: false, passphrase: pass });

async function commit(repo: Repository, vm: string, data: Buffer[]): Promise<{ point: RestorePoint; stored: number }> {
  const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), repo.idKey);
  await repo.blocks.load();
  const map = new BlockMap(data.length * BLOCK, BLOCK);
  let stored = 0;
  for (const [i, raw] of data.entries()) {
    const { hash, encoded } = await codec.encode(raw, 'none', 0);
    map.set(i, hash);
    if (repo.blocks.reserve(hash)) {
      await repo.blocks.add(hash, encoded);
      stored++;
    }
  }
  const id = Repository.newPointId();
  const disk = { name: 'd.raw', sizeBytes: map.diskSize, blockSize: BLOCK, blocks: map.blockCount, zeroBlocks: 0, transport: 't', mode: 'full' as const };
  const point = await repo.commitPoint({ id, job: 'j', vm, session: id, createdAt: new Date().toISOString(), disks: [disk as never] }, [map]);
  return { point, stored };
}

function blocks(seed: number, n: number): Buffer[] {
  const rng = new Prng(seed);
  return Array.from({ length: n }, () => rng.fill(Buffer.alloc(BLOCK)));
}

describe('repository upgrade (core)', function () {
  this.timeout(30_000);

  it('an encrypted repository with a pending gc batch and a damaged-blocks record keeps all three meanings at version 2', async function () {
    const backend = new MemoryBackend();
    const repo = await Repository.open(backend, { create: true, passphrase: pass, settings: { encrypted: true, format: 1 }, scrypt: FAST });
    const keep = blocks(1, 6);
    const gone = blocks(2, 6);
    const kept = await commit(repo, 'vm1', keep);
    const dropped = await commit(await open(backend), 'vm2', gone);
    await (await open(backend)).deletePoint(dropped.point);
    // A restore running: gc condemns the unused pack but cannot sweep it.
    const { RepositoryLock } = await import('../repository/repository-lock.js');
    const reader = await RepositoryLock.acquire((await open(backend)).backend, { operation: 'restore', vms: ['other'] });
    const g = await runGc(await open(backend), { graceMs: 0 });
    expect(g.pending.packs).to.equal(1);
    await reader.release();
    await writeDamagedBlocks((await open(backend)).backend, [
      { hash: 'ab'.repeat(32), pack: null, offset: null, reason: 'not-indexed', detail: 'planted', foundAt: new Date().toISOString() },
    ]);

    const report = await upgradeRepository(await open(backend));
    expect(report).to.include({ fromVersion: 1, indexObjectsWritten: 1, mutableObjectsCopied: 3 });
    expect([...backend.objects.keys()].filter((k) => /^(index|gc|health|locks)\//.test(k))).to.deep.equal([]);

    const v2 = await open(backend);
    expect(v2.format).to.equal(2);
    expect((await readDamagedBlocks(v2.backend)).map((b) => b.detail), 'the sealed record opens under mutable/').to.deep.equal(['planted']);
    const again = await commit(v2, 'vm3', gone);
    expect(again.stored, 'the condemned pack is still never deduplicated against').to.equal(6);
    const health = await runVerify(await open(backend), new InlineBlockCodec((n) => (n === 'none' ? none : undefined), v2.idKey));
    expect(health.status).to.equal('ok');
    const after = await runGc(await open(backend), { graceMs: 0 });
    expect(after.deletedPacks, 'the pending batch is swept at version 2').to.equal(1);
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), v2.idKey);
    const last = await open(backend);
    const map = await last.readMap(kept.point.disks[0]);
    for (let i = 0; i < map.blockCount; i++) expect((await last.blocks.read(map.get(i)!, codec)).equals(keep[i])).to.equal(true);
  });
});
