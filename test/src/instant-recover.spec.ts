import { execFile, spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { QmpClient } from '@ferry/source-qemu';
import { StorageDaemon } from '@ferry/source-qemu/dist/testing/storage-daemon.js';
import { makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { basicJob, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;

/** Waits until `predicate` holds, at most `ms`. */
async function until(predicate: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * `ferry instant-recover`: every disk of a point served writable and handed to QEMU, as a printed
 * command line that QEMU runs, or as blockdevs added over QMP to a qemu-storage-daemon.
 */
describe('ferry instant-recover: a VM straight from a restore point', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-recover-');
  let job: string;
  const disks = ['root.raw', 'data.raw'];
  const services: ServiceProcess[] = [];

  before(async function () {
    skipUnlessTools(this, { 'qemu-system-x86_64': 'qemu-system-x86', 'qemu-storage-daemon': 'qemu-system-common', nbdcopy: 'libnbd-bin' });
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(path.join(t.dir, 'images', 'root.raw'), { sizeBytes: 6 * MiB, seed: 1 });
    await makeVmImage(path.join(t.dir, 'images', 'data.raw'), { sizeBytes: 3 * MiB + 4096, seed: 2 });
    job = writeJob(t.dir, basicJob({ disks }));
    const r = await runFerry(['backup', job]);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
  });
  afterEach(async function () {
    await Promise.all(services.splice(0).map((s) => s.stop()));
  });
  after(() => t.cleanup());

  it('--print: a QEMU command line that QEMU runs, with every disk of the point attached', async function () {
    const sock = path.join(t.dir, 'print.sock');
    const s = await startService(['instant-recover', job, '--vm', 'web01', '--print', '--json', '--listen', `unix:${sock}`, '--overlay', path.join(t.dir, 'ov-print')]);
    services.push(s);
    await until(() => /"event":"qemu"/.test(s.stdout()), 10_000, 'the command line');
    const { argv } = s.stdout().split('\n').map((l) => (l ? JSON.parse(l) : {})).find((e) => e.event === 'qemu') as { argv: string[] };
    expect(argv[0]).to.equal('qemu-system-x86_64');
    // Paused (-S) and with its own monitor: QEMU opens every blockdev at start, which is what is checked.
    // TCG only: nested KVM is not usable on this test machine (../shared/TESTVM.md).
    const args: string[] = [];
    for (let i = 1; i < argv.length; i++) {
      if (argv[i] === '-accel') i++;
      else if (argv[i] !== '-nographic') args.push(argv[i]!);
    }
    const qmp = path.join(t.dir, 'vm-qmp.sock');
    const vm = spawn(argv[0]!, [...args, '-accel', 'tcg', '-S', '-display', 'none', '-serial', 'null', '-monitor', 'none', '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    vm.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      let client: QmpClient | undefined;
      const deadline = Date.now() + 20_000;
      while (!client) {
        client = await QmpClient.connect(`unix:${qmp}`, { connectTimeoutMs: 2000 }).catch(() => undefined);
        if (!client && (vm.exitCode !== null || Date.now() > deadline)) throw new Error(`QEMU did not start from the printed command line (exit ${vm.exitCode}): ${stderr}`);
        if (!client) await new Promise((r) => setTimeout(r, 200));
      }
      try {
        const nodes = await client.execute<{ 'node-name': string; drv: string; image: { 'virtual-size': number } }[]>('query-named-block-nodes');
        const nbd = nodes.filter((n) => n.drv === 'nbd');
        expect(nbd.map((n) => n['node-name']).sort()).to.deep.equal(['ferry0-root.raw', 'ferry1-data.raw']);
        expect(nbd.find((n) => n['node-name'] === 'ferry1-data.raw')!.image['virtual-size']).to.equal(3 * MiB + 4096);
      } finally {
        await client.close();
      }
    } finally {
      vm.kill('SIGKILL');
    }
  });

  it('--qmp: adds the disks as blockdevs to a running qemu-storage-daemon; reads through it match the point; removed at stop', async function () {
    const daemon = await StorageDaemon.start({ writableExports: true, vm: 'guest' });
    try {
      const s = await startService(['instant-recover', job, '--vm', 'web01', '--qmp', daemon.qmp, '--json', '--listen', `unix:${path.join(t.dir, 'qmp-mode.sock')}`, '--overlay', path.join(t.dir, 'ov-qmp')]);
      services.push(s);
      await until(() => /"event":"attached"/.test(s.stdout()), 10_000, 'attaching');
      const c = await QmpClient.connect(daemon.qmp);
      try {
        for (const [i, d] of disks.entries()) {
          await c.execute('block-export-add', { type: 'nbd', id: `check${i}`, 'node-name': `ferry${i}-${d}`, name: `check-${d}` });
        }
      } finally {
        await c.close();
      }
      for (const d of disks) {
        const out = path.join(t.dir, `through-qsd-${d}`);
        await run('nbdcopy', [`nbd+unix:///check-${d}?socket=${daemon.nbdPath}`, out]);
        expect(readFileSync(out).equals(readFileSync(path.join(t.dir, 'images', d))), d).to.equal(true);
      }
      const c2 = await QmpClient.connect(daemon.qmp);
      try {
        for (const i of [0, 1]) await c2.execute('block-export-del', { id: `check${i}` });
      } finally {
        await c2.close();
      }
      await new Promise((r) => setTimeout(r, 300));
      await s.stop();
      const c3 = await QmpClient.connect(daemon.qmp);
      try {
        const nodes = await c3.execute<{ 'node-name': string }[]>('query-named-block-nodes');
        expect(nodes.map((n) => n['node-name']).filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
      } finally {
        await c3.close();
      }
    } finally {
      await daemon.stop();
    }
  });
});
