import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, JobRuntime } from '@ferry/core';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, FERRY_BIN, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

const MiB = 1024 * 1024;

/**
 * `ferry key change` killed with SIGKILL at random moments (bounded: 8 kills, each inside one
 * uninterrupted run's duration): the repository must always open with the old or the new passphrase.
 */
describe('key change is crash-safe (kill -9 at random moments)', function () {
  const t = tempDir('ferry-keycrash-');
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'vm.raw');
  const passes = ['alpha one', 'bravo two'];
  const jobs: string[] = [];

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 4 * MiB, seed: 3, holes: 0.2 });
    passes.forEach((p, i) => {
      writeFileSync(path.join(t.dir, `pass-${i}`), p);
      const yaml = basicJob({ disks: ['vm.raw'] }).replace('  path: ./repo\n', `  path: ./repo\n  encryption: { passphraseFile: ./pass-${i} }\n`);
      jobs.push(writeJob(t.dir, yaml, `job-${i}.yaml`));
    });
    const r = await runFerry(['backup', jobs[0], '--json']);
    expect(r.code, r.stderr).to.equal(0);
  });
  after(() => t.cleanup());

  /** Which passphrases open the repository now (and can read its points). */
  async function opening(): Promise<number[]> {
    const ok: number[] = [];
    for (const i of [0, 1]) {
      const rt = await JobRuntime.open(jobs[i], { sourceMayBeGone: true });
      try {
        const repo = await rt.repository({ create: false });
        const [p] = await repo.listPoints();
        await repo.readMap(p.disks[0]);
        ok.push(i);
      } catch (err) {
        if (!(err instanceof FerryError && err.code === 'REPO_WRONG_PASSPHRASE')) throw err;
      } finally {
        await rt.close();
      }
    }
    return ok;
  }

  function keyChange(from: number, killAfterMs?: number): Promise<{ code: number | null; signal: string | null; ms: number }> {
    return new Promise((resolve, reject) => {
      const t0 = Date.now();
      const child = spawn(process.execPath, [FERRY_BIN, 'key', 'change', jobs[from], '--new-passphrase-file', path.join(t.dir, `pass-${1 - from}`)], {
        cwd: ROOT,
        stdio: 'ignore',
      });
      const timer = killAfterMs === undefined ? undefined : setTimeout(() => child.kill('SIGKILL'), killAfterMs);
      child.on('error', reject);
      child.on('close', (code, signal) => {
        clearTimeout(timer);
        resolve({ code, signal, ms: Date.now() - t0 });
      });
    });
  }

  it('after every kill the repository opens with the old or the new passphrase; a finished change leaves only the new one', async function () {
    this.timeout(240_000);
    const full = await keyChange(0);
    expect(full.code).to.equal(0);
    expect(await opening()).to.deep.equal([1]);
    let current = 1;
    for (let i = 0; i < 5; i++) {
      const r = await keyChange(current, randomInt(Math.floor(full.ms * 0.3), full.ms + 1));
      const open = await opening();
      expect(open.length, `attempt ${i}: ${JSON.stringify(r)}`).to.be.at.least(1);
      if (r.code === 0) expect(open).to.deep.equal([1 - current]);
      if (!open.includes(current)) current = 1 - current;
    }
    // Whatever state the kills left, a clean change from a passphrase that opens finishes it.
    const last = await keyChange(current);
    expect(last.code).to.equal(0);
    expect(await opening()).to.deep.equal([1 - current]);
    const out = path.join(t.dir, 'restored');
    const res = await runFerry(['restore', jobs[1 - current], '--vm', 'web01', '--disk', 'vm.raw', '--to', out]);
    expect(res.code, res.stderr).to.equal(0);
    expect(await firstDifference(image, out)).to.equal(-1);
  });
});
