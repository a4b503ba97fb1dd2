import { mkdirSync, openSync, writeSync, closeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, ROOT, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';

/** Outside test/fixtures/plugins on purpose: jobs that name that folder do not need it. */
const CRASHING_COMPRESSOR = path.join(ROOT, 'test', 'fixtures', 'override-plugins', 'crashing-compressor');

interface Report {
  status: string;
  vms: { vm: string; status: string; restorePoint: string | null; error?: { code: string; message: string } }[];
  disks: { vm: string; disk: string; status: string; restorePoint: string | null; error?: { code: string; message: string; where: { offset?: number; plugin?: string } } }[];
}

const BLOCK = 256 * 1024;
const BAD_BLOCK = 3;

/**
 * A compressor that fails on one block, and worker threads that die. The fixture plugin
 * `crashing-compressor`, found through the job's `plugins:` folder and selected by name, fails on a
 * block that starts with a marker. What must hold: the failing disk fails with the
 * block named (index and offset), the VM it belongs to gets no restore point (a VM's point is
 * committed only when all its disks succeeded: no half point), other VMs of the job complete and
 * restore, and a dead worker thread fails the session with WORKER_FAILED instead of hanging.
 */
describe('worker crash: a compressor that fails on one block, a worker thread that dies', function () {
  const t = tempDir();
  const ds = path.join(t.dir, 'images');
  after(() => t.cleanup());

  async function image(name: string, seed: number, marker?: string): Promise<string> {
    const file = path.join(ds, name);
    mkdirSync(path.dirname(file), { recursive: true });
    await makeVmImage(file, { sizeBytes: 4 * 1024 * 1024, seed, holes: 0 });
    if (marker) {
      const fd = openSync(file, 'r+');
      writeSync(fd, Buffer.from(marker, 'latin1'), 0, marker.length, BAD_BLOCK * BLOCK);
      closeSync(fd);
    }
    return file;
  }

  function job(name: string, vms: string[]): string {
    return writeJob(
      t.dir,
      [
        `job: ${name}`,
        `plugins: [${CRASHING_COMPRESSOR}]`,
        'source:',
        '  host: file',
        '  datastore: ./images',
        '  vms:',
        ...vms.map((v) => `    - ${v}`),
        'transport: hotadd',
        `repository: { type: filesystem, path: ./repo-${name} }`,
        'storage: { blockSize: 256KiB, compression: { compressor: crashing } }',
        'parallelDisks: 2',
      ].join('\n'),
      `${name}.yaml`,
    );
  }

  /** The CLI with a hard stop: a hang is a failure, not a stuck test run. */
  async function backup(jobFile: string): Promise<CliResult> {
    const r = await Promise.race([
      runFerry(['backup', jobFile, '--json']),
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error('ferry backup hung (no exit within 90 s)')), 90_000).unref()),
    ]);
    return r;
  }

  it('fails the disk with the block named; its VM gets no point; the other VM completes and restores', async function () {
    const bad = await image('throw/bad.raw', 81, 'FERRY-TEST-THROW');
    const sibling = await image('throw/sibling.raw', 82);
    const good = await image('throw/good.raw', 83);
    const jobFile = job('throw', ['{ name: vmbad, disks: [throw/bad.raw, throw/sibling.raw] }', '{ name: vmgood, disks: [throw/good.raw] }']);
    const r = await backup(jobFile);
    expect(r.code, r.stdout + r.stderr).to.equal(1);
    const rep = json<Report>(r);
    expect(rep.status).to.equal('failed');
    expect(rep.disks.map((d) => [d.disk, d.status])).to.deep.equal([
      ['throw/bad.raw', 'failed'],
      ['throw/sibling.raw', 'success'],
      ['throw/good.raw', 'success'],
    ]);
    const failed = rep.disks[0].error!;
    expect(failed.code).to.equal('PLUGIN_FAILED');
    expect(failed.where.plugin).to.equal('ferry-test-crashing-compressor');
    expect(failed.where.offset).to.equal(BAD_BLOCK * BLOCK);
    expect(failed.message).to.include(`block ${BAD_BLOCK}`).and.include('refuses this block');
    // No half restore point: the VM with the failed disk has none, not even for its good disk.
    expect(rep.vms.map((v) => [v.vm, v.status])).to.deep.equal([
      ['vmbad', 'failed'],
      ['vmgood', 'success'],
    ]);
    expect(rep.vms[0].restorePoint).to.equal(null);
    expect(rep.vms[0].error?.code).to.equal('BACKUP_DISK_FAILED');
    expect(rep.disks[1].restorePoint, 'the sibling disk was copied but belongs to no point').to.equal(null);
    const list = await runFerry(['list', jobFile, '--json']);
    expect(list.code, list.stderr).to.equal(0);
    expect(list.stdout).to.not.include('vmbad');
    const none = await runFerry(['restore', jobFile, '--vm', 'vmbad', '--disk', 'throw/sibling.raw', '--point', 'latest', '--to', path.join(t.dir, 'nothing')]);
    expect(none.code).to.equal(2);
    const out = path.join(t.dir, 'restored-good');
    const rr = await runFerry(['restore', jobFile, '--vm', 'vmgood', '--disk', 'throw/good.raw', '--point', 'latest', '--to', out]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(good, out)).to.equal(-1);
    void bad;
    void sibling;
  });

  for (const [marker, how] of [
    ['FERRY-TEST-EXIT', 'process.exit in the worker'],
    ['FERRY-TEST-UNCAUGHT', 'an uncaught error in the worker'],
  ]) {
    it(`a worker thread that dies (${how}) fails the session with WORKER_FAILED, no point, no hang`, async function () {
      const name = marker.toLowerCase().replace(/[^a-z]/g, '');
      await image(`${name}/disk.raw`, 91, marker);
      const jobFile = job(name, [`{ name: vm${name}, disks: [${name}/disk.raw] }`]);
      const r = await backup(jobFile);
      expect(r.code, r.stdout + r.stderr).to.equal(1);
      const rep = json<Report>(r);
      expect(rep.status).to.equal('failed');
      expect(rep.vms[0].restorePoint).to.equal(null);
      const err = rep.disks[0].error!;
      expect(err.code, err.message).to.equal('WORKER_FAILED');
      // The block that was in the dead thread's hands (or a later one) is named with its offset.
      expect(err.where.offset, err.message).to.be.a('number');
      expect(err.message).to.match(/block \d+/);
      const list = await runFerry(['list', jobFile, '--json']);
      expect(list.stdout).to.not.include(`vm${name}`);
    });
  }
});
