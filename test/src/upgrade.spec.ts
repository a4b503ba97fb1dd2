import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { runAndKill } from './support/run-and-kill.js';

const MiB = 1024 * 1024;

/** Files under `dir` (empty folders left by deletes do not count). */
const filesUnder = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => e.name) : [];

const version = (repo: string): number => (JSON.parse(readFileSync(path.join(repo, 'ferry-repository.json'), 'utf8')) as { version: number }).version;

async function verifies(repo: string, why: string): Promise<void> {
  const v = await runFerry(['verify', '--repository', repo, '--json']);
  expect(v.code, `${why}: ${v.stdout}${v.stderr}`).to.equal(0);
}

/**
 * `ferry repository upgrade`: a version 1 repository (a full and an incremental point) moves to
 * version 2, restores byte-identical and deduplicates against what it held; an upgrade killed at random moments leaves a repository that verifies and
 * that the next upgrade finishes.
 */
describe('ferry repository upgrade (format 1 to 2)', function () {
  this.timeout(240_000);
  const t = tempDir('ferry-upgrade-');
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'web01.raw');
  const pristine = path.join(t.dir, 'pristine');
  const copies = new Map<string, string>();
  let job: string;

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 24 * MiB, seed: 71, holes: 0.2 });
    job = writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './pristine' }));
    for (let run = 0; run < 2; run++) {
      if (run === 1) await changeVmImage(image, { count: 6, length: 8192, seed: 4 });
      const r = await runFerry(['backup', job, '--json'], { env: { FERRY_REPOSITORY_FORMAT: '1' } });
      expect(r.code, r.stderr).to.equal(0);
      const point = json<{ disks: { restorePoint: string }[] }>(r).disks[0].restorePoint;
      copies.set(point, path.join(t.dir, `copy-${run}`));
      cpSync(image, copies.get(point)!);
    }
    expect(version(pristine)).to.equal(1);
  });
  after(() => t.cleanup());

  function fresh(name: string): string {
    const dir = path.join(t.dir, name);
    rmSync(dir, { recursive: true, force: true });
    cpSync(pristine, dir, { recursive: true });
    return dir;
  }

  it('upgrades, every point restores byte-identical, and backups go on incrementally', async function () {
    const repo = fresh('up');
    const r = await runFerry(['repository', 'upgrade', '--repository', repo, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const report = json<{ fromVersion: number; packs: number; indexObjectsWritten: number; leftoversRemoved: number }>(r);
    expect(report.fromVersion).to.equal(1);
    expect(report.packs).to.be.at.least(2);
    expect(report.indexObjectsWritten).to.equal(1);
    expect(version(repo)).to.equal(2);
    expect(filesUnder(path.join(repo, 'index'))).to.deep.equal([]);
    expect(filesUnder(path.join(repo, 'locks'))).to.deep.equal([]);
    await verifies(repo, 'after the upgrade');
    const upJob = writeJob(t.dir, basicJob({ disks: ['web01.raw'], repo: './up' }), 'up.yaml');
    for (const [point, copy] of copies) {
      const out = path.join(t.dir, `restored-${point}`);
      const rr = await runFerry(['restore', upJob, '--vm', 'web01', '--disk', 'web01.raw', '--point', point, '--to', out]);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(await firstDifference(copy, out), point).to.equal(-1);
      rmSync(out);
    }
    const b = await runFerry(['backup', upJob, '--json']);
    expect(b.code, b.stderr).to.equal(0);
    expect(json<{ disks: { blocks: { new: number } }[] }>(b).disks[0].blocks.new, 'deduplicated against the upgraded index').to.equal(0);
    const again = json<{ fromVersion: number }>(await runFerry(['repository', 'upgrade', '--repository', upJob, '--json']));
    expect(again.fromVersion, 'a job file names the repository too; version 2 is left as it is').to.equal(2);
  });

  it('a killed upgrade (kill -9 at random moments) leaves a repository that verifies, and the next upgrade finishes', async function () {
    const timing = fresh('timing');
    const whole = await runAndKill(['repository', 'upgrade', '--repository', timing], path.join(timing, 'locks'), { at: 'never' });
    expect(whole.code, whole.stderr).to.equal(0);
    const held = Math.max(20, whole.heldMs ?? whole.totalMs);
    const rng = new Prng(23);
    const deadline = Date.now() + 40_000;
    let killed = 0;
    for (let i = 0; i < 4 && Date.now() < deadline; i++) {
      const repo = fresh('killed');
      const run = await runAndKill(['repository', 'upgrade', '--repository', repo], path.join(repo, 'locks'), { at: 'lock', afterMs: rng.int(held) });
      if (run.outcome === 'killed') killed++;
      await verifies(repo, `killed after ${run.heldMs?.toFixed(0)} ms of ${held.toFixed(0)} ms (version ${version(repo)})`);
      const finish = await runFerry(['repository', 'upgrade', '--repository', repo]);
      expect(finish.code, finish.stdout + finish.stderr).to.equal(0);
      expect(version(repo)).to.equal(2);
      expect(filesUnder(path.join(repo, 'index')), 'no version 1 index objects left').to.deep.equal([]);
      await verifies(repo, 'after the second upgrade');
    }
    expect(killed, 'at least one run was killed mid-way').to.be.at.least(1);
  });
});
