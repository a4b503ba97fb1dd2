import path from 'node:path';
import { expect } from 'chai';
import { tempDir } from './support/helpers.js';
import { hostTool as tool, skipUnlessGuestCanBoot } from './support/guest-tools.js';
import {
  checkWriterFile,
  lastWriterRound,
  makeDataDisk,
  startVm,
  WRITER_LAYOUT,
  type TestVm,
} from './support/test-vm.js';

interface FsInfo {
  name: string;
  mountpoint: string;
  type: string;
  disk: { 'bus-type': string; dev?: string }[];
}

describe('test VM: a real Linux guest under QEMU TCG (slow)', function () {
  const t = tempDir('ferry-vm-');
  const disk = path.join(t.dir, 'data.qcow2');
  let vm: TestVm | undefined;

  before(async function () {
    await skipUnlessGuestCanBoot(this);
    await makeDataDisk(disk, 64, 'qcow2');
    vm = await startVm({ dir: path.join(t.dir, 'vm'), disk, format: 'qcow2', workload: 'writer' });
  });

  after(async function () {
    this.timeout(60_000);
    await vm?.stop();
    t.cleanup();
  });

  it('answers guest-ping over the agent socket', async function () {
    expect(await vm!.agent('guest-ping')).to.deep.equal({});
  });

  it('lists the ext4 file system on vda in guest-get-fsinfo', async function () {
    const fs = await vm!.agent<FsInfo[]>('guest-get-fsinfo');
    const data = fs.find((f) => f.mountpoint === '/mnt');
    expect(data, JSON.stringify(fs)).to.include({ name: 'vda', type: 'ext4' });
    expect(data!.disk.map((d) => d['bus-type'])).to.include('virtio');
  });

  it('shows the writer workload writing on the console', async function () {
    this.timeout(30_000);
    await vm!.waitForConsole(/ferry-guest: writer round 3 /, 25_000);
    expect(vm!.consoleLog()).to.match(/ferry-guest: mounted \/dev\/vda on \/mnt/);
  });

  it('freezes the guest file system (the writer stalls) and thaws it (the writer goes on)', async function () {
    this.timeout(60_000);
    expect(await vm!.agent('guest-fsfreeze-freeze', undefined, { timeoutMs: 30_000 })).to.equal(1);
    try {
      expect(await vm!.agent('guest-fsfreeze-status')).to.equal('frozen');
      const atFreeze = lastWriterRound(vm!.consoleLog());
      await new Promise((r) => setTimeout(r, 2_000));
      // at most the round already past its writes may still report
      expect(lastWriterRound(vm!.consoleLog()) - atFreeze).to.be.at.most(1);
    } finally {
      expect(await vm!.agent('guest-fsfreeze-thaw', undefined, { timeoutMs: 30_000 })).to.equal(1);
    }
    expect(await vm!.agent('guest-fsfreeze-status')).to.equal('thawed');
    const afterThaw = lastWriterRound(vm!.consoleLog());
    await vm!.waitForConsole((log) => lastWriterRound(log) >= afterThaw + 2, 20_000);
  });

  it('shows node disk0 in QMP query-block', async function () {
    const blocks = await vm!.qmp<{ device: string; inserted?: { 'node-name': string; file: string; drv: string } }[]>('query-block');
    const d0 = blocks.find((b) => b.inserted?.['node-name'] === 'disk0');
    expect(d0, JSON.stringify(blocks)).to.not.equal(undefined);
    expect(d0!.inserted).to.include({ drv: 'qcow2', file: disk });
  });

  it('stops cleanly, and the data disk is a clean ext4 whose writer files check out', async function () {
    this.timeout(60_000);
    // every writer file exists once the writer went round them all
    await vm!.waitForConsole((log) => lastWriterRound(log) >= WRITER_LAYOUT.files, 30_000);
    const pid = vm!.pid;
    await vm!.stop();
    await vm!.stop(); // idempotent
    expect(() => process.kill(pid, 0), 'QEMU is gone').to.throw();
    expect(vm!.consoleLog()).to.match(/ferry-guest: unmounted \/mnt/);
    const raw = path.join(t.dir, 'data.raw');
    expect((await tool('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, raw])).code).to.equal(0);
    const fsck = await tool('e2fsck', ['-fn', raw]);
    expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
    const rounds: number[] = [];
    for (let f = 0; f < WRITER_LAYOUT.files; f++) {
      const name = `w${String(f).padStart(2, '0')}.dat`;
      const r = await tool('debugfs', ['-R', `cat /${WRITER_LAYOUT.dir}/${name}`, raw]);
      rounds.push(checkWriterFile(Buffer.from(r.stdout, 'latin1'), f));
    }
    expect(Math.max(...rounds)).to.equal(lastWriterRound(vm!.consoleLog()));
  });
});

describe('test VM: raw disk, idle guest, hard stop (slow)', function () {
  const t = tempDir('ferry-vm-');
  const disk = path.join(t.dir, 'data.raw');
  let vm: TestVm | undefined;

  before(async function () {
    await skipUnlessGuestCanBoot(this);
    await makeDataDisk(disk, 32, 'raw');
    vm = await startVm({ dir: path.join(t.dir, 'vm'), disk, format: 'raw', workload: 'idle', memoryMiB: 192 });
  });

  after(async function () {
    await vm?.stop({ graceful: false });
    t.cleanup();
  });

  it('boots the idle workload on a raw disk0, and nothing writes', async function () {
    expect(vm!.consoleLog()).to.match(/ferry-guest: ready workload=idle/);
    const blocks = await vm!.qmp<{ inserted?: { 'node-name': string; drv: string } }[]>('query-block');
    expect(blocks.find((b) => b.inserted?.['node-name'] === 'disk0')?.inserted?.drv).to.equal('raw');
    expect(lastWriterRound(vm!.consoleLog())).to.equal(0);
  });

  it('stop({ graceful: false }) kills QEMU at once, like a host crash', async function () {
    const pid = vm!.pid;
    const started = Date.now();
    await vm!.stop({ graceful: false });
    expect(Date.now() - started).to.be.below(5_000);
    expect(() => process.kill(pid, 0), 'QEMU is gone').to.throw();
    expect(vm!.consoleLog()).to.not.match(/ferry-guest: shutdown requested/);
  });
});
