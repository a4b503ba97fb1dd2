import { closeSync, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
import { fileSize, flipBit, pointDisks, repoFiles, repoFormat, repoPath, storedBlocks, truncatePack, type PointDisk } from './support/repo-inspect.js';

interface VerifyJson {
  status: string;
  blocks: { needed: number; checked: number; ok: number; damaged: number; missing: number };
  throughputMiBps: number;
  damagedBlocks: { hash: string; reason: string; pack: string | null; neededBy: { vm: string; restorePoint: string; disk: string; offsets: number[] }[] }[];
  affectedPoints: { vm: string; restorePoint: string }[];
  damagedBlocksObject: string | null;
  error?: { code: string; message: string };
}

const KiB = 1024;
const BLOCK = 256 * KiB;

/** Where each hash is needed: `point disk offset` strings, from the block maps themselves. */
function usesOf(disks: PointDisk[], hash: string): string[] {
  return disks.flatMap((d) => d.hashes.flatMap((h, i) => (h === hash ? [`${d.point} ${d.disk} ${i * d.blockSize}`] : [])));
}

describe('health check, damage and self-heal (incremental runs heal too)', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'vm.raw');
  const repo = path.join(t.dir, 'repo');
  const copies = new Map<string, string>();
  let job: string;
  let damaged = new Set<string>();

  async function backup(changes: { offset: number; length: number }[] | undefined): Promise<Record<string, unknown>> {
    const points = pointDisks(repo).map((d) => d.point).sort();
    if (changes) writeFileSync(`${image}.changes.json`, JSON.stringify({ since: points.at(-1), extents: changes }));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const report = json<{ disks: { restorePoint: string }[] }>(r);
    const copy = path.join(t.dir, `copy-${copies.size}`);
    copyFileSync(image, copy);
    copies.set(report.disks[0].restorePoint, copy);
    return report;
  }

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 64 * 1024 * KiB, seed: 41, holes: 0.1 });
    job = writeJob(
      t.dir,
      [
        'job: heal',
        `plugins: [${path.join(ROOT, 'test', 'fixtures', 'plugins')}]`,
        'source: { host: cbt-sim, datastore: ./images, vms: [ { name: vm1, disks: [vm.raw] } ] }',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    await backup(undefined);
    const rng = new Prng(9);
    const fd = openSync(image, 'r+');
    const changed = [5, 17, 60, 61, 130].map((b) => ({ offset: b * BLOCK + 4096, length: 8192 }));
    for (const c of changed) writeSync(fd, rng.fill(Buffer.alloc(c.length)), 0, c.length, c.offset);
    closeSync(fd);
    await backup(changed);
  });
  after(() => t.cleanup());

  it('passes on a healthy repository and reports what it read', async function () {
    const r = await runFerry(['verify', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const v = json<VerifyJson>(r);
    expect(v.status).to.equal('ok');
    expect(v.blocks.checked).to.equal(v.blocks.needed);
    expect(v.blocks.ok).to.equal(v.blocks.needed);
    expect(v.throughputMiBps).to.be.greaterThan(0);
  });

  it('finds every flipped bit and every block cut off a truncated pack, naming each point, disk and offset', async function () {
    const stored = storedBlocks(repo);
    const packs = [...new Set(stored.map((b) => b.pack))];
    expect(packs.length, 'the repository has several packs').to.be.at.least(2);
    const cutPack = packs[0];
    const cut = truncatePack(stored, cutPack, Math.floor(fileSize(stored.find((b) => b.pack === cutPack)!.file) * 0.7));
    const rng = new Prng(77);
    const others = stored.filter((b) => b.pack !== cutPack);
    const flipped = Array.from({ length: 6 }, () => others.splice(rng.int(others.length), 1)[0]);
    for (const b of flipped) flipBit(b, rng);
    damaged = new Set([...cut, ...flipped].map((b) => b.hash));

    const r = await runFerry(['verify', job, '--json']);
    expect(r.code, r.stderr).to.equal(1);
    const v = json<VerifyJson>(r);
    expect(v.status).to.equal('damaged');
    expect(v.error?.code).to.equal('VERIFY_DAMAGED');
    expect(new Set(v.damagedBlocks.map((d) => d.hash))).to.deep.equal(damaged);
    const disks = pointDisks(repo);
    for (const d of v.damagedBlocks) {
      expect(d.reason).to.be.oneOf(cut.some((c) => c.hash === d.hash) ? ['truncated'] : ['crc', 'malformed']);
      const named = d.neededBy.flatMap((u) => u.offsets.map((o) => `${u.restorePoint} ${u.disk} ${o}`));
      expect(named.sort(), d.hash).to.deep.equal(usesOf(disks, d.hash).sort());
    }
    expect(v.affectedPoints.length).to.be.at.least(1);
    expect(v.damagedBlocksObject).to.equal('health/damaged-blocks.json');
    expect(existsSync(repoPath(repo, 'health/damaged-blocks.json'))).to.equal(true);
  });

  it('restoring an affected point fails on a damaged block and names it', async function () {
    const disks = pointDisks(repo);
    const affected = disks.find((d) => d.hashes.some((h) => h && damaged.has(h)))!;
    const out = path.join(t.dir, 'broken.raw');
    const r = await runFerry(['restore', job, '--vm', 'vm1', '--disk', 'vm.raw', '--point', affected.point, '--to', out, '--json']);
    expect(r.code).to.equal(1);
    const err = json<{ error: { code: string; message: string; where: { offset?: number } } }>(r).error;
    expect(err.code).to.equal('REPO_CORRUPT_OBJECT');
    const named = /block ([0-9a-f]{64})/.exec(err.message)?.[1];
    expect(named && damaged.has(named), err.message).to.equal(true);
    expect(err.where.offset).to.be.a('number');
    expect(existsSync(out), 'no partial restore is left behind').to.equal(false);
  });

  it('the next incremental backup reads the damaged blocks again and reports them healed', async function () {
    const latest = pointDisks(repo).sort((a, b) => a.point.localeCompare(b.point)).at(-1)!;
    const onDisk = new Set(latest.hashes.filter((h): h is string => h !== undefined && damaged.has(h)));
    const report = (await backup([])) as { healedBlocks: number; disks: { mode: string; modeReason: string; blocks: { healed: number } }[] };
    expect(report.disks[0].mode).to.equal('incremental');
    expect(report.disks[0].modeReason).to.include('self-heal');
    expect(report.healedBlocks).to.equal(onDisk.size);
    expect(report.disks[0].blocks.healed).to.equal(onDisk.size);
    for (const h of onDisk) damaged.delete(h);
  });

  it('afterwards verify names only what could not be healed, and every intact point restores byte-identical', async function () {
    const r = await runFerry(['verify', job, '--json']);
    const v = json<VerifyJson>(r);
    expect(new Set(v.damagedBlocks.map((d) => d.hash))).to.deep.equal(damaged);
    expect(r.code).to.equal(damaged.size ? 1 : 0);
    const bad = new Set(pointDisks(repo).filter((d) => d.hashes.some((h) => h && damaged.has(h))).map((d) => d.point));
    for (const [point, copy] of copies) {
      if (bad.has(point)) continue;
      const out = path.join(t.dir, `restored-${point}`);
      const rr = await runFerry(['restore', job, '--vm', 'vm1', '--disk', 'vm.raw', '--point', point, '--to', out]);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(await firstDifference(copy, out), point).to.equal(-1);
      rmSync(out);
    }
  });
});

describe('health check without a job file, and a full backup healing a lost pack', function () {
  const t = tempDir();
  const repo = path.join(t.dir, 'repo');
  let job: string;
  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(path.join(t.dir, 'images', 'vm.raw'), { sizeBytes: 40 * 1024 * KiB, seed: 43, holes: 0.1 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], compression: 'none' }));
    const r = await runFerry(['backup', job]);
    expect(r.code, r.stderr).to.equal(0);
  });
  after(() => t.cleanup());

  it('`verify --repository` reports the blocks of a deleted pack as missing; a full backup stores them again', async function () {
    const stored = storedBlocks(repo);
    const lost = stored.filter((b) => b.pack === stored[0].pack);
    rmSync(lost[0].file);
    const r = await runFerry(['verify', '--repository', repo, '--json']);
    expect(r.code).to.equal(1);
    const v = json<VerifyJson>(r);
    expect(v.blocks.missing).to.equal(new Set(lost.map((b) => b.hash)).size);
    expect(v.damagedBlocks.every((d) => d.reason === 'pack-missing')).to.equal(true);
    const b = await runFerry(['backup', job, '--json']);
    expect(b.code, b.stderr).to.equal(0);
    expect(json<{ healedBlocks: number }>(b).healedBlocks).to.equal(v.blocks.missing);
    const again = await runFerry(['verify', '--repository', repo, '--sample', '50%', '--json']);
    expect(again.code, again.stdout).to.equal(0);
    expect(json<VerifyJson>(again).blocks.checked).to.be.below(v.blocks.needed);
  });

  it('rebuilds a damaged index object from its intact pack, and says so', async function () {
    // Format 1: one index object per pack, rebuilt in place. Format 2: the packs no readable
    // consolidated index object lists are indexed again by a new one, and the damaged one goes.
    const v2 = repoFormat(repo) === 2;
    const index = v2
      ? repoFiles(repo, 'indexes')[0]
      : repoFiles(repo, 'index').find((k) => existsSync(path.join(repo, k.replace(/^index/, 'packs'))))!; // not the lost pack's
    const file = path.join(repo, index);
    const bytes = readFileSync(file);
    bytes[60] ^= 0x08;
    writeFileSync(file, bytes);
    const r = await runFerry(['verify', '--repository', repo, '--json']);
    expect(r.code, r.stdout).to.equal(0);
    const v = json<VerifyJson & { repairedObjects: { object: string }[] }>(r);
    if (v2) {
      expect(v.repairedObjects).to.have.length(1);
      expect(v.repairedObjects[0].object).to.match(/^indexes\/[0-9a-f]{64}$/);
      // Gone, or repaired in place when the packs it listed make the same object again.
      expect(repoFiles(repo, 'indexes')).to.include(v.repairedObjects[0].object);
    } else expect(v.repairedObjects.map((o) => o.object)).to.deep.equal([index]);
    expect(storedBlocks(repo).length).to.be.greaterThan(0); // every index object decodes again
    const again = json<VerifyJson & { repairedObjects: unknown[] }>(await runFerry(['verify', '--repository', repo, '--json']));
    expect(again.repairedObjects).to.deep.equal([]);
  });

  it('names a job file or --repository, not neither', async function () {
    const r = await runFerry(['verify', '--json']);
    expect(r.code).to.equal(2);
    expect(json<{ error: { code: string } }>(r).error.code).to.equal('CLI_USAGE');
  });
});
