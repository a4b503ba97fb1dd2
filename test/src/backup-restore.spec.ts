import { copyFileSync, mkdirSync, renameSync, statSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

interface DiskJson {
  vm: string;
  disk: string;
  transport: string;
  mode: string;
  sizeBytes: number;
  bytesRead: number;
  zeroBytesSkipped: number;
  bytesTransferred: number;
  bytesWritten: number;
  durationMs: number;
  restorePoint: string;
  blocks: { total: number; zero: number; new: number; deduped: number };
}
interface ReportJson {
  status: string;
  disks: DiskJson[];
  bottleneck: string;
}

describe('backup and restore end to end (file source, hot-add, filesystem repository)', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const MiB = 1024 * 1024;
  let job: string;
  let first: ReportJson;
  let second: ReportJson;

  before(async function () {
    mkdirSync(images);
    await makeVmImage(path.join(images, 'web01.raw'), { sizeBytes: 40 * MiB, seed: 7, holes: 0.35 });
    await makeVmImage(path.join(images, 'web01-data.raw'), { sizeBytes: 24 * MiB + 12345, seed: 8, holes: 0.2 });
    job = writeJob(t.dir, basicJob({ disks: ['web01.raw', 'web01-data.raw'] }));
  });
  after(() => t.cleanup());

  it('backs up a VM with two disks and reports every figure per disk', async function () {
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    first = json<ReportJson>(r);
    expect(first.status).to.equal('success');
    expect(first.disks).to.have.length(2);
    const d = first.disks[0];
    expect(d).to.include({ vm: 'web01', disk: 'web01.raw', transport: 'hotadd', mode: 'full', sizeBytes: 40 * MiB });
    for (const k of ['bytesRead', 'zeroBytesSkipped', 'bytesTransferred', 'bytesWritten', 'durationMs'] as const) {
      expect(d[k], k).to.be.a('number');
    }
    expect(d.restorePoint).to.match(/^\d{8}T\d{9}Z-[0-9a-f]{6}$/);
    // holes are never read: what was read plus what was skipped without reading is at most the size
    expect(d.bytesRead).to.be.lessThan(d.sizeBytes);
    expect(d.zeroBytesSkipped).to.be.greaterThan(0);
    expect(d.bytesTransferred).to.be.lessThan(d.bytesRead);
    expect(first.disks[1].sizeBytes).to.equal(24 * MiB + 12345);
    copyFileSync(path.join(images, 'web01.raw'), path.join(t.dir, 'web01.v1'));
    copyFileSync(path.join(images, 'web01-data.raw'), path.join(t.dir, 'web01-data.v1'));
  });

  it('stores only new blocks on a second run after a few blocks changed', async function () {
    await changeVmImage(path.join(images, 'web01.raw'), { count: 5, length: 4096, seed: 99 });
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    second = json<ReportJson>(r);
    const [sys, data] = second.disks;
    expect(sys.blocks.new).to.be.at.least(1).and.at.most(5);
    expect(sys.bytesWritten).to.be.at.most(5 * 256 * 1024 + 5 * 64);
    expect(data.blocks.new).to.equal(0);
    expect(data.bytesWritten).to.equal(0);
    expect(second.disks[0].restorePoint).to.not.equal(first.disks[0].restorePoint);
  });

  it('lists both restore points', async function () {
    const r = await runFerry(['list', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const points = json<{ restorePoints: { id: string; vm: string; disks: { name: string }[] }[] }>(r).restorePoints;
    expect(points.map((p) => p.id)).to.deep.equal([first.disks[0].restorePoint, second.disks[0].restorePoint]);
    expect(points[0].disks.map((d) => d.name)).to.deep.equal(['web01.raw', 'web01-data.raw']);
  });

  it('restores each point byte-identical and sparse', async function () {
    const cases = [
      { point: first.disks[0].restorePoint, disk: 'web01.raw', expected: path.join(t.dir, 'web01.v1') },
      { point: first.disks[0].restorePoint, disk: 'web01-data.raw', expected: path.join(t.dir, 'web01-data.v1') },
      { point: 'latest', disk: 'web01.raw', expected: path.join(images, 'web01.raw') },
    ];
    for (const c of cases) {
      const out = path.join(t.dir, `restored-${c.disk}-${c.point}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', c.disk, '--point', c.point, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(c.expected, out), `${c.disk}@${c.point}`).to.equal(-1);
      const st = statSync(out);
      expect(st.blocks * 512, 'restored file is sparse').to.be.lessThan(st.size);
    }
  });

  it('restore of an unknown point or disk fails with a coded error', async function () {
    const noPoint = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--point', 'nope', '--to', path.join(t.dir, 'x'), '--json']);
    expect(noPoint.code).to.equal(2);
    expect(json<{ error: { code: string } }>(noPoint).error.code).to.equal('REPO_POINT_NOT_FOUND');
    const noDisk = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'sdb', '--to', path.join(t.dir, 'x'), '--json']);
    expect(json<{ error: { code: string } }>(noDisk).error.code).to.equal('RESTORE_NOT_FOUND');
  });

  it('lists and restores when the source datastore is gone', async function () {
    renameSync(images, `${images}.gone`);
    try {
      const list = await runFerry(['list', job, '--json']);
      expect(list.code, list.stderr).to.equal(0);
      const out = path.join(t.dir, 'restored-without-source');
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01-data.raw', '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(path.join(t.dir, 'web01-data.v1'), out)).to.equal(-1);
      const backup = await runFerry(['backup', job, '--json']);
      expect(backup.code).to.equal(2);
      expect(json<{ error: { code: string } }>(backup).error.code).to.equal('JOB_PATH_NOT_FOUND');
    } finally {
      renameSync(`${images}.gone`, images);
    }
  });
});
