import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

const MiB = 1024 * 1024;
const V2 = { FERRY_REPOSITORY_FORMAT: '2' };

interface BackupJson {
  status: string;
  disks: { restorePoint: string; mode: string; blocks: { new: number; deduped: number } }[];
}

/** Top-level entries of a repository folder (no `tmp/`). */
function top(repo: string): string[] {
  return readdirSync(repo)
    .filter((e) => e !== 'tmp')
    .sort();
}

/**
 * Repository format 2 through the CLI: created on request (`FERRY_REPOSITORY_FORMAT=2`), backed up
 * full and incremental, restored byte-identical, verified, a point forgotten and gc'd (consolidated
 * index objects merged), encrypted, and through the remote repository service. Format 1 stays the
 * default (every other spec).
 */
describe('repository format 2 end to end', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-v2-');
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'web01.raw');
  const copies = new Map<string, string>();

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 24 * MiB, seed: 61, holes: 0.2 });
    writeFileSync(path.join(t.dir, 'pass'), 'correct horse\n');
    writeJob(t.dir, basicJob({ disks: ['web01.raw'] }), 'plain.yaml');
    writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './v1' }), 'v1.yaml');
    writeJob(
      t.dir,
      basicJob({ disks: ['web01.raw'], repo: './enc' }).replace('  path: ./enc\n', '  path: ./enc\n  encryption: { passphraseFile: ./pass }\n'),
      'enc.yaml',
    );
  });
  after(() => {
    // The immutable attribute (when the platform allows it) stops even root's rm.
    spawnSync('chattr', ['-R', '-i', t.dir], { stdio: 'ignore' });
    t.cleanup();
  });

  async function backup(job: string, env: NodeJS.ProcessEnv = V2): Promise<BackupJson> {
    const r = await runFerry(['backup', path.join(t.dir, job), '--json'], { env });
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const report = json<BackupJson>(r);
    const copy = path.join(t.dir, `copy-${copies.size}`);
    cpSync(image, copy);
    copies.set(report.disks[0].restorePoint, copy);
    return report;
  }

  async function expectRestores(job: string, point: string): Promise<void> {
    const out = path.join(t.dir, `restored-${job}-${point}`);
    const r = await runFerry(['restore', path.join(t.dir, job), '--vm', 'web01', '--disk', 'web01.raw', '--point', point, '--to', out]);
    expect(r.code, r.stderr).to.equal(0);
    expect(await firstDifference(copies.get(point)!, out), point).to.equal(-1);
    rmSync(out);
  }

  it('creates a version 2 repository and backs up full and incremental into it; both restore byte-identical', async function () {
    const full = await backup('plain.yaml');
    const repo = path.join(t.dir, 'repo');
    expect(JSON.parse(readFileSync(path.join(repo, 'ferry-repository.json'), 'utf8')).version).to.equal(2);
    expect(top(repo)).to.include.members(['indexes', 'packs', 'points']);
    expect(top(repo)).to.not.include.members(['index', 'locks', 'health', 'gc']);
    await changeVmImage(image, { count: 5, length: 8192, seed: 3 });
    const incr = await backup('plain.yaml');
    expect(incr.disks[0].blocks.new).to.be.at.least(1).and.at.most(5);
    expect(readdirSync(path.join(repo, 'indexes'))).to.have.length(2); // one consolidated object per commit
    for (const p of [full, incr]) await expectRestores('plain.yaml', p.disks[0].restorePoint);
  });

  it('verifies, forgets a point and gc merges the index objects; the kept point still restores', async function () {
    const job = path.join(t.dir, 'plain.yaml');
    const v = await runFerry(['verify', job, '--json']);
    expect(v.code, v.stdout + v.stderr).to.equal(0);
    const points = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json'])).restorePoints.map((p) => p.id);
    const f = await runFerry(['forget', job, '--vm', 'web01', '--point', points[0], '--json']);
    expect(f.code, f.stdout + f.stderr).to.equal(0);
    const g = await runFerry(['gc', job, '--grace', '0s', '--rewrite-threshold', '1%', '--json']); // the full point's pack is mostly still used
    expect(g.code, g.stdout + g.stderr).to.equal(0);
    const gc = json<{ deletedPacks: number; indexObjectsMerged: number }>(g);
    expect(gc.deletedPacks, g.stdout).to.be.at.least(1);
    expect(gc.indexObjectsMerged, g.stdout).to.be.at.least(1);
    const repo = path.join(t.dir, 'repo');
    // The merged object, and the one of the packs the rewrite wrote this run.
    expect(readdirSync(path.join(repo, 'indexes')).length).to.be.at.most(2);
    const condemned = path.join(repo, 'mutable', 'gc', 'condemned');
    const left = existsSync(condemned) ? readdirSync(condemned, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()) : [];
    expect(left.map((e) => e.name), 'condemned copies go once no index object lists their packs').to.deep.equal([]);
    await expectRestores('plain.yaml', points[1]);
    const again = await runFerry(['verify', job, '--json']);
    expect(again.code, again.stdout).to.equal(0);
  });

  it('creates version 2 without the variable and version 1 on request, and reads an existing repository at its own version', async function () {
    writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './default' }), 'default.yaml');
    await backup('default.yaml', { FERRY_REPOSITORY_FORMAT: '' });
    expect(JSON.parse(readFileSync(path.join(t.dir, 'default', 'ferry-repository.json'), 'utf8')).version).to.equal(2);
    const r = await backup('v1.yaml', { FERRY_REPOSITORY_FORMAT: '1' });
    expect(JSON.parse(readFileSync(path.join(t.dir, 'v1', 'ferry-repository.json'), 'utf8')).version).to.equal(1);
    const again = await backup('v1.yaml', V2); // the variable only chooses the format of new repositories
    expect(again.disks[0].blocks.new).to.equal(0);
    expect(existsSync(path.join(t.dir, 'v1', 'indexes'))).to.equal(false);
    await expectRestores('v1.yaml', r.disks[0].restorePoint);
    writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './fresh' }), 'fresh.yaml');
    const bad = await runFerry(['backup', path.join(t.dir, 'fresh.yaml'), '--json'], { env: { FERRY_REPOSITORY_FORMAT: '3' } });
    expect(bad.code, bad.stdout).to.not.equal(0);
    expect(json<{ error: { code: string } }>(bad).error.code).to.equal('CLI_USAGE');
  });

  it('encrypted: sealed consolidated index objects, and a second backup deduplicates through them', async function () {
    const first = await backup('enc.yaml');
    const second = await backup('enc.yaml');
    expect(second.disks[0].blocks.new).to.equal(0);
    const repo = path.join(t.dir, 'enc');
    const config = JSON.parse(readFileSync(path.join(repo, 'ferry-repository.json'), 'utf8'));
    expect(config).to.include({ version: 2 });
    expect(config.encryption).to.include({ algorithm: 'AES-256-GCM' });
    for (const f of readdirSync(path.join(repo, 'indexes'))) expect(readFileSync(path.join(repo, 'indexes', f)).subarray(0, 4).toString()).to.equal('FENC');
    await expectRestores('enc.yaml', first.disks[0].restorePoint);
    const v = await runFerry(['verify', path.join(t.dir, 'enc.yaml'), '--json']);
    expect(v.code, v.stdout).to.equal(0);
  });

  it('immutable: retain-until dates on the point\'s objects; forget refused naming the date; gc deletes nothing it needs', async function () {
    writeJob(
      t.dir,
      basicJob({ disks: ['web01.raw'], repo: './imm' }).replace('  path: ./imm\n', '  path: ./imm\n  immutability: { days: 3 }\n'),
      'imm.yaml',
    );
    const r = await backup('imm.yaml');
    const point = r.disks[0].restorePoint;
    const repo = path.join(t.dir, 'imm');
    const manifest = JSON.parse(readFileSync(path.join(repo, 'points', 'web01', `${point}.json`), 'utf8')) as { retainUntil: string };
    expect(Date.parse(manifest.retainUntil) - Date.now()).to.be.within(2 * 86_400_000, 4 * 86_400_000);
    const dated = readdirSync(path.join(repo, 'mutable', 'retention'), { recursive: true, withFileTypes: true }).filter((e) => e.isFile());
    expect(dated.length, 'the filesystem backend records every date under mutable/retention/').to.be.at.least(4);
    const f = await runFerry(['forget', path.join(t.dir, 'imm.yaml'), '--vm', 'web01', '--point', point, '--json']);
    expect(f.code).to.not.equal(0);
    const err = json<{ error: { code: string; message: string } }>(f).error;
    expect(err.code).to.equal('REPO_IMMUTABLE');
    expect(err.message).to.include(manifest.retainUntil);
    const g = await runFerry(['gc', path.join(t.dir, 'imm.yaml'), '--grace', '0s', '--json']);
    expect(g.code, g.stdout + g.stderr).to.equal(0);
    expect(json<{ deletedPacks: number }>(g).deletedPacks).to.equal(0);
    await expectRestores('imm.yaml', point);
  });

  it('through the remote repository service', async function () {
    const certs = path.join(t.dir, 'certs');
    await initCerts(certs);
    const services: ServiceProcess[] = [];
    try {
      services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs], undefined, V2));
      services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'remote')], undefined, V2));
      writeJob(t.dir, remoteJob({ server: services[1].address, proxies: [services[0].address], certs, disks: ['web01.raw'] }), 'remote.yaml');
      const r = await backup('remote.yaml');
      expect(JSON.parse(readFileSync(path.join(t.dir, 'remote', 'ferry-repository.json'), 'utf8')).version).to.equal(2);
      await changeVmImage(image, { count: 3, length: 4096, seed: 9 });
      const incr = await backup('remote.yaml');
      expect(incr.disks[0].blocks.new).to.be.at.least(1).and.at.most(3);
      await expectRestores('remote.yaml', r.disks[0].restorePoint);
      await expectRestores('remote.yaml', incr.disks[0].restorePoint);
    } finally {
      for (const s of services) await s.stop();
    }
  });
});
