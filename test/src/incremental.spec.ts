import { copyFileSync, mkdirSync, openSync, closeSync, rmSync, writeSync, writeFileSync, ftruncateSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

/**
 * The core's incremental path, driven by the test-only `cbt-sim` source host (changed extents from a
 * file the test writes). Real changed-block tracking through QEMU dirty bitmaps is tested with the
 * QEMU source host; this suite pins the core's rules: when a run may be incremental, what it reads,
 * and that every restore point still restores on its own.
 */
interface DiskJson {
  mode: string;
  modeReason: string;
  bytesRead: number;
  restorePoint: string;
  blocks: { total: number; unchanged: number; new: number };
}

const KiB = 1024;
const BLOCK = 256 * KiB;

describe('incremental backups with changed-block tracking (core rules, simulated host)', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'vm.raw');
  const sidecar = `${image}.changes.json`;
  let job: string;
  const points: { id: string; copy: string }[] = [];

  const jobYaml = (blockSize = '256KiB'): string =>
    [
      'job: cbt',
      `plugins: [${path.join(ROOT, 'test', 'fixtures', 'plugins')}]`,
      'source: { host: cbt-sim, datastore: ./images, vms: [ { name: vm1, disks: [vm.raw] } ] }',
      'repository: { type: filesystem, path: ./repo }',
      `storage: { blockSize: ${blockSize}, compression: optimal }`,
    ].join('\n');

  async function backup(): Promise<DiskJson> {
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const d = json<{ disks: DiskJson[] }>(r).disks[0];
    const copy = path.join(t.dir, `copy-${points.length}`);
    copyFileSync(image, copy);
    points.push({ id: d.restorePoint, copy });
    return d;
  }

  function write(offsets: number[], length: number, seed: number): { offset: number; length: number }[] {
    const rng = new Prng(seed);
    const fd = openSync(image, 'r+');
    for (const off of offsets) writeSync(fd, rng.fill(Buffer.alloc(length)), 0, length, off);
    closeSync(fd);
    return offsets.map((offset) => ({ offset, length }));
  }

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 32 * 1024 * KiB, seed: 31, holes: 0.1 });
    job = writeJob(t.dir, jobYaml());
  });
  after(() => t.cleanup());

  it('the first run is full and says why', async function () {
    const d = await backup();
    expect(d.mode).to.equal('full');
    expect(d.modeReason).to.include('no earlier restore point');
  });

  it('the next run reads only the changed blocks and carries the rest over', async function () {
    const changed = write([BLOCK * 3 + 100, BLOCK * 40, BLOCK * 77 + BLOCK - 10], 20, 5);
    writeFileSync(sidecar, JSON.stringify({ since: points[0].id, extents: changed }));
    const d = await backup();
    expect(d.mode).to.equal('incremental');
    expect(d.modeReason).to.include(points[0].id);
    // blocks 3, 40, 77 and 78 (the last write straddles two blocks)
    expect(d.blocks.unchanged).to.equal(d.blocks.total - 4);
    expect(d.bytesRead).to.be.at.most(4 * BLOCK);
  });

  it('a changes file for another point makes the run full, naming the reason', async function () {
    write([BLOCK * 10], 4 * KiB, 6);
    writeFileSync(sidecar, JSON.stringify({ since: 'someone-else', extents: [] }));
    const d = await backup();
    expect(d.mode).to.equal('full');
    expect(d.modeReason).to.include('changes file is for someone-else');
  });

  it('a resized disk makes the run full even when changes are vouched for', async function () {
    const fd = openSync(image, 'r+');
    ftruncateSync(fd, 33 * 1024 * KiB);
    closeSync(fd);
    writeFileSync(sidecar, JSON.stringify({ since: points.at(-1)!.id, extents: [] }));
    const d = await backup();
    expect(d.mode).to.equal('full');
    expect(d.modeReason).to.include('resized');
  });

  it('a changed block size makes the run full', async function () {
    writeFileSync(sidecar, JSON.stringify({ since: points.at(-1)!.id, extents: [] }));
    writeJob(t.dir, jobYaml('1MiB'));
    const d = await backup();
    expect(d.mode).to.equal('full');
    expect(d.modeReason).to.include('block size changed');
    writeJob(t.dir, jobYaml());
  });

  it("a snapshot whose view did not hold fails the VM before its point is committed", async function () {
    writeFileSync(path.join(images, 'view-broken'), '');
    try {
      const before = json<{ restorePoints: unknown[] }>(await runFerry(['list', job, '--json'])).restorePoints.length;
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code).to.equal(1);
      const report = json<{ vms: { status: string; error: { message: string } }[] }>(r);
      expect(report.vms[0].status).to.equal('failed');
      expect(report.vms[0].error.message).to.include('did not hold').and.include('(check)');
      expect(json<{ restorePoints: unknown[] }>(await runFerry(['list', job, '--json'])).restorePoints).to.have.length(before);
    } finally {
      rmSync(path.join(images, 'view-broken'));
    }
  });

  it('every restore point restores byte-identical on its own', async function () {
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}`);
      const r = await runFerry(['restore', job, '--vm', 'vm1', '--disk', 'vm.raw', '--point', p.id, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out), p.id).to.equal(-1);
    }
  });
});
