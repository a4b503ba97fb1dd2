import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { NoneCompressor } from '../compression/none-compressor.js';
import { FerryError } from '../errors.js';
import { runVerify } from '../maintenance/verify.js';
import { InlineBlockCodec } from './block-codec.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { Prng } from '../testing/vm-image.js';
import { BlockMap } from './block-map.js';
import { readPackTrailer } from './pack.js';
import { packKey } from './pack-writer.js';
import { Repository, type PassphraseSource } from './repository.js';

const FAST = { N: 2 ** 12, r: 8, p: 1 };
const pass = (p: string | undefined): PassphraseSource => ({ describe: 'test passphrase', read: async () => p });

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    return err instanceof FerryError ? err.code : `not a FerryError: ${String(err)}`;
  }
  return 'no error';
}

/** Writes one point of `blocks` through the repository the way a session does. */
async function backup(repo: Repository, blocks: Buffer[], id = Repository.newPointId()): Promise<BlockMap> {
  const none = new NoneCompressor();
  const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), repo.idKey);
  const map = new BlockMap(blocks.length * 65536, 65536);
  await repo.blocks.load();
  for (const [i, b] of blocks.entries()) {
    const { hash, encoded } = await codec.encode(b, 'none', 0);
    map.set(i, hash);
    if (repo.blocks.reserve(hash)) await repo.blocks.add(hash, encoded);
  }
  const disk = { name: 'd0', sizeBytes: map.diskSize, blockSize: 65536, map: '', mapSha256: '', blocks: blocks.length, zeroBlocks: 0, transport: 'test', mode: 'full' as const };
  await repo.commitPoint({ id, job: 'j', vm: 'vm1', session: id, createdAt: new Date().toISOString(), disks: [disk] }, [map]);
  return map;
}

describe('encryption at rest (repository layer)', function () {
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
  const rng = new Prng(11);
  const none = new NoneCompressor();
  const blocks = Array.from({ length: 12 }, (_, i) => (i === 3 ? Buffer.alloc(65536, 0x07) : rng.fill(Buffer.alloc(65536))));

  async function encrypted(backend = new MemoryBackend()): Promise<{ backend: MemoryBackend; repo: Repository }> {
    const repo = await Repository.open(backend, { create: true, passphrase: pass('correct horse'), settings: { encrypted: true }, scrypt: FAST });
    return { backend, repo };
  }

  it('stores nothing in plaintext: no block content, no SHA-256 of a block, no plaintext manifest', async function () {
    const { backend, repo } = await encrypted();
    await backup(repo, blocks);
    const all = [...backend.objects.entries()];
    expect(all.some(([k]) => k.startsWith('keys/'))).to.equal(true);
    for (const b of blocks) {
      const sha = createHash('sha256').update(b).digest();
      const window = b.subarray(1000, 1032);
      for (const [key, bytes] of all) {
        expect(bytes.includes(window), `block content in ${key}`).to.equal(false);
        expect(bytes.includes(sha), `binary SHA-256 in ${key}`).to.equal(false);
        expect(bytes.toString('latin1').includes(sha.toString('hex')), `hex SHA-256 in ${key}`).to.equal(false);
      }
    }
    const manifest = all.find(([k]) => k.endsWith('.json') && k.startsWith('points/'))!;
    expect(manifest[1].subarray(0, 4).toString()).to.equal('FENC');
    expect(manifest[1].includes(Buffer.from('ferry-restore-point'))).to.equal(false);
  });

  it('reopens with the passphrase and reads every block back; dedup works across sessions', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    const packsBefore = [...backend.objects.keys()].filter((k) => k.startsWith('packs/')).length;
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    await backup(again, blocks); // the same content: every block deduplicated
    expect([...backend.objects.keys()].filter((k) => k.startsWith('packs/')).length).to.equal(packsBefore);
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    for (let i = 0; i < blocks.length; i++) expect((await again.blocks.read(map.get(i)!, codec)).equals(blocks[i])).to.equal(true);
    expect((await again.listPoints('vm1')).length).to.equal(2);
  });

  it('refuses a wrong or missing passphrase with its code, naming the repository', async function () {
    const { backend } = await encrypted();
    expect(await code(Repository.open(backend, { create: false, passphrase: pass('wrong') }))).to.equal('REPO_WRONG_PASSPHRASE');
    expect(await code(Repository.open(backend, { create: false, passphrase: pass(undefined) }))).to.equal('REPO_PASSPHRASE_REQUIRED');
    expect(await code(Repository.open(backend, { create: false }))).to.equal('REPO_PASSPHRASE_REQUIRED');
    const err = await Repository.open(backend, { create: false, passphrase: pass('wrong') }).catch((e: Error) => e);
    expect(String(err)).to.include('memory:');
  });

  it('a job asking for encryption refuses a plaintext repository', async function () {
    const backend = new MemoryBackend();
    await Repository.open(backend, { create: true });
    expect(await code(Repository.open(backend, { create: false, passphrase: pass('x'), settings: { encrypted: true } }))).to.equal('REPO_SETTINGS_MISMATCH');
  });

  it('binds each record to its block id: a record moved to another block fails its tag', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    await again.blocks.load();
    const a = again.blocks.locate(map.get(0)!)!;
    const b = again.blocks.locate(map.get(1)!)!;
    expect(a.pack).to.equal(b.pack);
    const pack = backend.objects.get(packKey(a.pack))!;
    const recA = Buffer.from(pack.subarray(a.offset, a.offset + a.length));
    recA.copy(pack, b.offset); // same length (65536 raw bytes, stored with `none`)
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    const e = await again.blocks.read(map.get(1)!, codec).catch((x: FerryError) => x);
    expect(e).to.be.instanceOf(FerryError);
    expect((e as FerryError).code).to.equal('REPO_CORRUPT_OBJECT');
    expect((e as FerryError).message).to.match(/AES-256-GCM/);
  });

  it('seals the pack trailer and index objects; an index can still be rebuilt from its pack with the key', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    const packK = [...backend.objects.keys()].find((k) => k.startsWith('packs/'))!;
    const idxK = [...backend.objects.keys()].find((k) => k.startsWith('index/'))!;
    expect(backend.objects.get(packK)!.subarray(0, 4).toString()).to.equal('FPE1');
    expect(backend.objects.get(idxK)!.subarray(0, 4).toString()).to.equal('FENC');
    expect(readPackTrailer(backend.objects.get(packK)!, packK, repo.cipher).length).to.equal(12); // 12 distinct blocks
    expect(() => readPackTrailer(backend.objects.get(packK)!, packK)).to.throw(/encrypted/);
    backend.objects.set(idxK, Buffer.from('garbage'));
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    again.blocks.useCache = false; // the local cache still holds the good copy; read the repository's
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    expect((await again.blocks.read(map.get(5)!, codec)).equals(blocks[5])).to.equal(true);
    expect(again.blocks.badIndexes[0].rebuilt?.length).to.equal(12);
  });

  it('verify reports a flipped bit in a sealed record as damaged and names the point', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    await repo.blocks.load();
    const at = repo.blocks.locate(map.get(7)!)!;
    backend.objects.get(packKey(at.pack))![at.offset + 100] ^= 0x10;
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    const report = await runVerify(again, codec);
    expect(report.status).to.equal('damaged');
    expect(report.damagedBlocks.map((d) => d.hash)).to.deep.equal([map.get(7)!.toString('hex')]);
    expect(report.damagedBlocks[0].reason).to.equal('crc');
    expect(report.damagedBlocks[0].neededBy[0].vm).to.equal('vm1');
  });

  it('verify tells a forged record (CRC-32 fixed up) by its GCM tag: reason auth', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    await repo.blocks.load();
    const at = repo.blocks.locate(map.get(2)!)!;
    const pack = backend.objects.get(packKey(at.pack))!;
    const rec = pack.subarray(at.offset, at.offset + at.length);
    rec[200] ^= 0x01;
    const { crc32 } = await import('../util/checksums.js');
    rec.writeUInt32LE(crc32(rec.subarray(8)), 4);
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    const report = await runVerify(again, new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey));
    expect(report.damagedBlocks.map((d) => [d.hash, d.reason])).to.deep.equal([[map.get(2)!.toString('hex'), 'auth']]);
  });

  it('changes the passphrase without rewriting data: the new one opens, the old one is refused', async function () {
    const { backend, repo } = await encrypted();
    const map = await backup(repo, blocks);
    const before = new Map([...backend.objects].filter(([k]) => !k.startsWith('keys/') && !k.startsWith('locks/')));
    const r = await repo.changePassphrase('battery staple', FAST);
    expect(r.removed.length).to.equal(1);
    for (const [k, v] of before) expect(backend.objects.get(k)!.equals(v), `${k} unchanged`).to.equal(true);
    expect(await code(Repository.open(backend, { create: false, passphrase: pass('correct horse') }))).to.equal('REPO_WRONG_PASSPHRASE');
    const again = await Repository.open(backend, { create: false, passphrase: pass('battery staple') });
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    expect((await again.blocks.read(map.get(0)!, codec)).equals(blocks[0])).to.equal(true);
  });

  it('a creation killed between its key object and its config leaves a location the next creation accepts', async function () {
    const backend = new MemoryBackend();
    await encrypted(backend);
    backend.objects.delete('ferry-repository.json'); // as if the process died before the config's put
    const { repo } = await encrypted(backend);
    expect([...backend.objects.keys()].filter((k) => k.startsWith('keys/'))).to.have.length(2);
    await backup(repo, blocks.slice(0, 2));
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    expect(again.keyObject).to.equal(repo.keyObject); // the stray object (another repository id) never opens
    expect(await again.listPoints()).to.have.length(1);
  });

  it('a damaged sealed damaged-blocks list or gc batch counts as unreadable advice, not as a stop', async function () {
    const { backend, repo } = await encrypted();
    await backup(repo, blocks.slice(0, 3));
    backend.objects.set('health/damaged-blocks.json', Buffer.from('FENC-but-not-really'));
    backend.objects.set('gc/pending/20260101T000000Z-00000000.json', Buffer.from('garbage'));
    const again = await Repository.open(backend, { create: false, passphrase: pass('correct horse') });
    const { runGc } = await import('../maintenance/gc.js');
    const report = await runGc(again);
    expect(report.restorePoints).to.equal(1);
    expect(backend.objects.has('gc/pending/20260101T000000Z-00000000.json')).to.equal(false);
    const codec = new InlineBlockCodec((n) => (n === 'none' ? none : undefined), again.idKey);
    expect((await runVerify(again, codec)).status).to.equal('ok');
  });

  it('a lock object stays readable without the passphrase (keyless open), sealed objects do not', async function () {
    const { backend, repo } = await encrypted();
    await backup(repo, blocks);
    const keyless = await Repository.open(backend, { create: false, keyless: true });
    expect(await code(keyless.listPoints())).to.equal('REPO_PASSPHRASE_REQUIRED');
    const { listLocks } = await import('./lock-record.js');
    expect(await listLocks(keyless.backend)).to.deep.equal([]);
  });
});
