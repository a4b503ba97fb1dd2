import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { COMPRESSION_LEVELS } from '@ferry/core';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

describe('compression levels end to end', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'vm.raw');
  const points: { level: string; id: string; copy: string }[] = [];
  after(() => t.cleanup());

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 12 * 1024 * 1024, seed: 41, holes: 0.1 });
  });

  it('each level shrinks the same data at least as much as the one before it', async function () {
    const sent: Record<string, number> = {};
    for (const level of COMPRESSION_LEVELS) {
      const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], compression: level, repo: `./repo-${level}` }), `job-${level}.yaml`);
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      sent[level] = json<{ disks: { bytesTransferred: number }[] }>(r).disks[0].bytesTransferred;
    }
    expect(sent.none).to.be.greaterThan(sent['dedupe-friendly']);
    expect(sent['dedupe-friendly']).to.be.greaterThan(sent.optimal);
    expect(sent.optimal).to.be.greaterThan(sent.high);
    expect(sent.high).to.be.greaterThan(sent.extreme);
  });

  it('backs up at every level, each run after a change, into one repository', async function () {
    for (const [i, level] of COMPRESSION_LEVELS.entries()) {
      await changeVmImage(image, { count: 8, length: 64 * 1024, seed: 100 + i });
      const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], compression: level }));
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const id = json<{ disks: { restorePoint: string }[] }>(r).disks[0].restorePoint;
      const copy = path.join(t.dir, `v-${level}`);
      copyFileSync(image, copy);
      points.push({ level, id, copy });
    }
  });

  it('every point restores byte-identical while the job now uses another level', async function () {
    const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], compression: 'dedupe-friendly' }));
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.level}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--point', p.id, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out), p.level).to.equal(-1);
    }
  });
});
