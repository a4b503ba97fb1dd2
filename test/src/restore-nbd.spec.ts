import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startDaemon, type Daemon } from './support/processes.js';

describe('restore to an NBD export (qemu-nbd)', function () {
  const t = tempDir();
  let nbd: Daemon | undefined;
  before(function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils' }); // npm test installs it when it can
  });
  after(async () => {
    await nbd?.stop();
    t.cleanup();
  });

  it('writes the restore point through NBD, byte-identical, and reports the export', async function () {
    mkdirSync(path.join(t.dir, 'images'));
    const image = path.join(t.dir, 'images', 'vm.raw');
    await makeVmImage(image, { sizeBytes: 8 * 1024 * 1024, seed: 51, holes: 0.3 });
    const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'] }));
    const b = await runFerry(['backup', job, '--json']);
    expect(b.code, b.stderr).to.equal(0);
    const target = path.join(t.dir, 'target.raw');
    writeFileSync(target, Buffer.alloc(8 * 1024 * 1024, 0xee)); // stale content everywhere
    const sock = path.join(t.dir, 'nbd.sock');
    nbd = await startDaemon('qemu-nbd', ['--persistent', '-f', 'raw', '-k', sock, target], sock);
    const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--to', `nbd+unix:///?socket=${sock}`, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    expect(json<{ to: string }>(r).to).to.include(sock);
    await nbd.stop();
    expect(await firstDifference(image, target)).to.equal(-1);
  });

  it('a target smaller than the disk is refused before anything is written', async function () {
    const small = path.join(t.dir, 'small.raw');
    writeFileSync(small, Buffer.alloc(1024 * 1024));
    const sock = path.join(t.dir, 'small.sock');
    nbd = await startDaemon('qemu-nbd', ['--persistent', '-f', 'raw', '-k', sock, small], sock);
    const job = path.join(t.dir, 'job.yaml');
    const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--to', `unix:${sock}`, '--json']);
    expect(r.code).to.equal(1);
    expect(json<{ error: { code: string; message: string } }>(r).error.code).to.equal('RESTORE_TARGET');
  });
});
