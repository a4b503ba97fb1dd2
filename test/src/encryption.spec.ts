import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, openSync, readdirSync, readFileSync, readSync, closeSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

const MiB = 1024 * 1024;
const BLOCK = 256 * 1024;

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...filesUnder(p));
    else out.push(p);
  }
  return out;
}

/** What must never show up in an encrypted repository: per non-zero block, its SHA-256 and 3 content windows. */
function secretsOf(image: string): { sha: Buffer[]; windows: Buffer[] } {
  const out = { sha: [] as Buffer[], windows: [] as Buffer[] };
  const size = statSync(image).size;
  const fd = openSync(image, 'r');
  try {
    for (let off = 0; off < size; off += BLOCK) {
      const b = Buffer.alloc(Math.min(BLOCK, size - off));
      readSync(fd, b, 0, b.length, off);
      if (b.every((x) => x === 0)) continue;
      out.sha.push(createHash('sha256').update(b).digest());
      for (const at of [0, Math.floor(b.length / 2), b.length - 48]) {
        const w = b.subarray(at, at + 48);
        if (new Set(w).size > 8) out.windows.push(Buffer.from(w)); // skip runs (zeros, repeated bytes)
      }
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/** Every place a secret appears in the repository's files. */
function leaks(repo: string, secrets: { sha: Buffer[]; windows: Buffer[] }): string[] {
  const found: string[] = [];
  for (const file of filesUnder(repo)) {
    const bytes = readFileSync(file);
    const text = bytes.toString('latin1').toLowerCase();
    for (const s of secrets.sha) {
      if (bytes.includes(s)) found.push(`binary SHA-256 ${s.toString('hex')} in ${file}`);
      if (text.includes(s.toString('hex'))) found.push(`hex SHA-256 ${s.toString('hex')} in ${file}`);
    }
    for (const w of secrets.windows) if (bytes.includes(w)) found.push(`block content in ${file}`);
  }
  return found;
}

describe('encryption at rest end to end (filesystem repository)', function () {
  const t = tempDir('ferry-enc-');
  const images = path.join(t.dir, 'images');
  const repo = path.join(t.dir, 'repo');
  const image = path.join(images, 'web01.raw');
  let job: string;
  const points: { id: string; copy: string }[] = [];

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 24 * MiB, seed: 21, holes: 0.3 });
    writeFileSync(path.join(t.dir, 'pass-old'), 'correct horse\n');
    writeFileSync(path.join(t.dir, 'pass-new'), 'battery staple\n');
    writeFileSync(path.join(t.dir, 'pass-wrong'), 'tr0ub4dor\n');
    const enc = (file: string): string => `  encryption: { passphraseFile: ./${file} }`;
    const withPass = (file: string, extra = ''): string =>
      basicJob({ disks: ['web01.raw'], extra }).replace('  path: ./repo\n', `  path: ./repo\n${enc(file)}\n`);
    job = writeJob(t.dir, withPass('pass-old'));
    writeJob(t.dir, withPass('pass-wrong'), 'wrong.yaml');
    writeJob(t.dir, withPass('pass-new', 'retention: { restorePoints: 1 }'), 'new.yaml');
    writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './plain' }), 'plain.yaml');
  });
  after(() => t.cleanup());

  it('backs up full and incremental into an encrypted repository and restores both byte-identical', async function () {
    for (let run = 0; run < 2; run++) {
      if (run === 1) await changeVmImage(image, { count: 6, length: 8192, seed: 5 });
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      const report = json<{ disks: { restorePoint: string; blocks: { new: number; deduped: number } }[]; protection: object }>(r);
      expect(report.protection).to.deep.equal({ encrypted: true });
      const copy = path.join(t.dir, `web01.v${run}`);
      cpSync(image, copy);
      points.push({ id: report.disks[0].restorePoint, copy });
      if (run === 1) expect(report.disks[0].blocks.new).to.be.at.least(1).and.at.most(6); // dedup works on keyed ids
    }
    const listed = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    expect(listed.restorePoints.map((p) => p.id)).to.deep.equal(points.map((p) => p.id));
    const config = JSON.parse(readFileSync(path.join(repo, 'ferry-repository.json'), 'utf8'));
    expect(config.encryption).to.include({ algorithm: 'AES-256-GCM', blockIds: 'HMAC-SHA256', kdf: 'scrypt' });
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--point', p.id, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out)).to.equal(-1);
    }
  });

  it('no file of the repository holds plaintext block content or a plaintext SHA-256 (a plaintext repository does)', async function () {
    const secrets = [points[0].copy, points[1].copy].map(secretsOf);
    const all = { sha: secrets.flatMap((s) => s.sha), windows: secrets.flatMap((s) => s.windows) };
    expect(all.sha.length).to.be.greaterThan(40);
    expect(all.windows.length).to.be.greaterThan(40);
    expect(leaks(repo, all)).to.deep.equal([]);
    // The same scan finds both in a plaintext repository: it can fail.
    const r = await runFerry(['backup', path.join(t.dir, 'plain.yaml'), '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const plain = leaks(path.join(t.dir, 'plain'), secretsOf(image));
    expect(plain.some((l) => l.startsWith('binary SHA-256'))).to.equal(true);
    expect(plain.some((l) => l.startsWith('block content'))).to.equal(true);
  });

  it('refuses a wrong or missing passphrase with a code naming the repository', async function () {
    const wrong = await runFerry(['list', path.join(t.dir, 'wrong.yaml'), '--json']);
    expect(wrong.code, 'a wrong passphrase is bad input').to.equal(2);
    const e = json<{ error: { code: string; message: string } }>(wrong).error;
    expect(e.code).to.equal('REPO_WRONG_PASSPHRASE');
    expect(e.message).to.include(repo);
    const none = await runFerry(['verify', '--repository', repo, '--json'], { env: { FERRY_PASSPHRASE: '' } });
    expect(json<{ error: { code: string } }>(none).error.code).to.equal('REPO_PASSPHRASE_REQUIRED');
    expect(none.code).to.equal(2);
    const viaEnv = await runFerry(['verify', '--repository', repo, '--sample', '10%', '--json'], { env: { FERRY_PASSPHRASE: 'correct horse' } });
    expect(viaEnv.code, viaEnv.stdout).to.equal(0);
    const viaFile = await runFerry(['verify', '--repository', repo, '--passphrase-file', path.join(t.dir, 'pass-wrong'), '--json']);
    expect(json<{ error: { code: string } }>(viaFile).error.code).to.equal('REPO_WRONG_PASSPHRASE');
  });

  it('verify finds a flipped bit in an encrypted block and names the restore points that need it', async function () {
    const copy = path.join(t.dir, 'repo-damaged');
    cpSync(repo, copy, { recursive: true });
    const pack = filesUnder(path.join(copy, 'packs')).sort()[0];
    const bytes = readFileSync(pack);
    bytes[100] ^= 0x04; // inside the first block record (records start at offset 8)
    writeFileSync(pack, bytes);
    const r = await runFerry(['verify', '--repository', copy, '--passphrase-file', path.join(t.dir, 'pass-old'), '--json']);
    expect(r.code).to.equal(1);
    const v = json<{ status: string; damagedBlocks: { reason: string; neededBy: { vm: string; restorePoint: string }[] }[] }>(r);
    expect(v.status).to.equal('damaged');
    expect(v.damagedBlocks).to.have.length(1);
    expect(v.damagedBlocks[0].reason).to.be.oneOf(['crc', 'auth']);
    expect(v.damagedBlocks[0].neededBy.length).to.be.at.least(1);
    expect(v.damagedBlocks[0].neededBy.every((n) => n.vm === 'web01' && points.some((p) => p.id === n.restorePoint))).to.equal(true);
  });

  it('ferry unlock works without the passphrase (lock objects are plaintext)', async function () {
    const r = await runFerry(['unlock', '--repository', repo, '--json'], { env: { FERRY_PASSPHRASE: '' } });
    expect(r.code, r.stderr + r.stdout).to.equal(0);
  });

  it('key change rewraps the keys: every point restores with the new passphrase, the old one is refused', async function () {
    const before = new Map(filesUnder(repo).filter((f) => !/\/(keys|locks)\//.test(f)).map((f) => [f, readFileSync(f)]));
    const r = await runFerry(['key', 'change', job, '--new-passphrase-file', path.join(t.dir, 'pass-new'), '--json']);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    expect(json<{ removed: string[] }>(r).removed).to.have.length(1);
    for (const [f, b] of before) expect(readFileSync(f).equals(b), `${f} not rewritten`).to.equal(true);
    const old = await runFerry(['list', job, '--json']);
    expect(json<{ error: { code: string } }>(old).error.code).to.equal('REPO_WRONG_PASSPHRASE');
    const newJob = path.join(t.dir, 'new.yaml');
    for (const p of points) {
      const out = path.join(t.dir, `rekeyed-${p.id}`);
      const res = await runFerry(['restore', newJob, '--vm', 'web01', '--disk', 'web01.raw', '--point', p.id, '--to', out]);
      expect(res.code, res.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out)).to.equal(-1);
    }
  });

  it('prune and gc work on the encrypted repository; the kept point still restores', async function () {
    const newJob = path.join(t.dir, 'new.yaml');
    const pr = await runFerry(['prune', newJob, '--json']);
    expect(pr.code, pr.stderr).to.equal(0);
    expect(json<{ removed: { restorePoint: string }[] }>(pr).removed.map((x) => x.restorePoint)).to.deep.equal([points[0].id]);
    const gc = await runFerry(['gc', newJob, '--rewrite-threshold', '1%', '--json']);
    expect(gc.code, gc.stderr + gc.stdout).to.equal(0);
    const g = json<{ bytesReclaimed: number; deletedPacks: number; packs: { rewritten: number } }>(gc);
    expect(g.deletedPacks + g.packs.rewritten).to.be.at.least(1);
    const out = path.join(t.dir, 'after-gc');
    const res = await runFerry(['restore', newJob, '--vm', 'web01', '--disk', 'web01.raw', '--to', out]);
    expect(res.code, res.stderr).to.equal(0);
    expect(await firstDifference(points[1].copy, out)).to.equal(-1);
    const v = await runFerry(['verify', newJob, '--json']);
    expect(json<{ status: string }>(v).status).to.equal('ok');
  });
});
