import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { basicJob, runFerry, tempDir, writeJob } from './support/helpers.js';
import { skipUnlessGuestCanBoot } from './support/guest-tools.js';
import { startService, type ServiceProcess } from './support/remote-services.js';
import { lastWriterRound, makeDataDisk, startVm, type TestVm } from './support/test-vm.js';

interface FsInfo {
  name: string;
  mountpoint: string;
  type: string;
}

/**
 * Instant recovery of the real Linux test VM (`../shared/TESTVM.md`): its disk is backed up after
 * the guest wrote to it, then the guest boots from the restore point served by `ferry
 * instant-recover` (writes to the overlay), its agent answers, its workload writes on, and the
 * repository still verifies afterwards.
 */
describe('instant recovery: the test VM boots from a served restore point (slow)', function () {
  this.timeout(240_000);
  const t = tempDir('ferry-ir-vm-');
  const images = path.join(t.dir, 'images');
  let vm: TestVm | undefined;
  let serve: ServiceProcess | undefined;

  before(async function () {
    await skipUnlessGuestCanBoot(this);
    mkdirSync(images);
    await makeDataDisk(path.join(images, 'data.raw'), 64, 'raw');
    // The guest writes its files once, then powers off: the disk at rest is what gets backed up.
    const first = await startVm({ dir: path.join(t.dir, 'vm1'), disk: path.join(images, 'data.raw'), format: 'raw', workload: 'writer' });
    await first.waitForConsole(/ferry-guest: writer round 2 /, 60_000);
    await first.stop();
    const job = writeJob(t.dir, basicJob({ disks: ['data.raw'] }));
    const r = await runFerry(['backup', job]);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
  });

  after(async function () {
    this.timeout(60_000);
    await vm?.stop();
    await serve?.stop();
    t.cleanup();
  });

  it('boots from the export, the agent answers and the workload writes to the overlay; the repository verifies', async function () {
    const job = path.join(t.dir, 'job.yaml');
    const sock = path.join(t.dir, 'ir.sock');
    serve = await startService(['instant-recover', job, '--vm', 'web01', '--print', '--listen', `unix:${sock}`, '--overlay', path.join(t.dir, 'overlay')]);
    const t0 = Date.now();
    vm = await startVm({ dir: path.join(t.dir, 'vm2'), disk: `nbd+unix:///data.raw?socket=${sock}`, format: 'raw', workload: 'writer' });
    const bootMs = Date.now() - t0;
    expect(await vm.agent('guest-ping')).to.deep.equal({});
    const fs = await vm.agent<FsInfo[]>('guest-get-fsinfo');
    expect(fs.find((f) => f.mountpoint === '/mnt'), JSON.stringify(fs)).to.include({ name: 'vda', type: 'ext4' });
    await vm.waitForConsole((log) => lastWriterRound(log) >= 2, 60_000);
    console.log(`      booted from the served point in ${bootMs} ms (TCG)`);
    await vm.stop();
    vm = undefined;
    await serve.stop();
    serve = undefined;
    const v = await runFerry(['verify', job]);
    expect(v.code, v.stdout + v.stderr).to.equal(0);
  });
});
