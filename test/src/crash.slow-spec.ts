import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, FERRY_BIN, json, runFerry, tempDir, writeJob } from './support/helpers.js';

function countFiles(dir: string): number {
  let n = 0;
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) n += e.isDirectory() ? countFiles(path.join(dir, e.name)) : 1;
  } catch {
    // not there yet
  }
  return n;
}

/** Starts `ferry backup`, waits until it has stored `packs` new pack files, then kills it with SIGKILL. */
async function killMidBackup(job: string, repo: string, packs: number): Promise<number> {
  const before = countFiles(path.join(repo, 'packs'));
  const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  const deadline = Date.now() + 60_000;
  let stored = 0;
  while (Date.now() < deadline) {
    stored = countFiles(path.join(repo, 'packs')) - before;
    if (stored >= packs || child.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  child.kill('SIGKILL');
  await exited;
  return stored;
}

describe('crash safety: kill -9 during a backup (slow)', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const repo = path.join(t.dir, 'repo');
  let job: string;
  let firstPoint: string;
  after(() => t.cleanup());

  before(async function () {
    mkdirSync(images);
    await makeVmImage(path.join(images, 'vm.raw'), { sizeBytes: 16 * 1024 * 1024, seed: 21 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], compression: 'high' }));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    firstPoint = json<{ disks: { restorePoint: string }[] }>(r).disks[0].restorePoint;
    copyFileSync(path.join(images, 'vm.raw'), path.join(t.dir, 'vm.v1'));
    // a much larger, mostly new disk so the next backup is still running when it is killed
    await makeVmImage(path.join(images, 'vm.raw'), { sizeBytes: 192 * 1024 * 1024, seed: 22, holes: 0.05 });
  });

  for (const [round, packs] of [[1, 1], [2, 1], [3, 2]] as const) {
    it(`round ${round}: killed after ${packs} new pack(s), the earlier point still restores and nothing half-done is visible`, async function () {
      const stored = await killMidBackup(job, repo, packs);
      expect(stored, 'the backup was killed while storing packs').to.be.greaterThan(0);
      const list = await runFerry(['list', job, '--json']);
      expect(list.code, list.stderr).to.equal(0);
      const ids = json<{ restorePoints: { id: string }[] }>(list).restorePoints.map((p) => p.id);
      expect(ids).to.deep.equal([firstPoint]);
      const out = path.join(t.dir, `restored-${round}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--point', firstPoint, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(path.join(t.dir, 'vm.v1'), out)).to.equal(-1);
    });
  }

  it('a new run after the kills succeeds, reuses what was stored, and restores byte-identical', async function () {
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const report = json<{ disks: { restorePoint: string; blocks: { deduped: number } }[] }>(r);
    expect(report.disks[0].blocks.deduped, 'blocks in packs the killed runs indexed are deduplicated').to.be.greaterThan(0);
    const out = path.join(t.dir, 'restored-final');
    const rr = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--to', out]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(path.join(images, 'vm.raw'), out)).to.equal(-1);
  });
});
