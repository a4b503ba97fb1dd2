import path from 'node:path';
import { expect } from 'chai';
import { listExports } from '@ferry/source-qemu/dist/testing/storage-daemon.js';
import { spawn } from 'node:child_process';
import { FERRY_BIN, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { hostTool, skipUnlessGuestCanBoot } from './support/guest-tools.js';
import { checkWriterFile, lastWriterRound, makeDataDisk, startVm, WRITER_LAYOUT, type TestVm } from './support/test-vm.js';

/**
 * A real Linux guest under QEMU TCG, its QMP socket as the source host, a loop in the guest writing
 * and syncing files while Ferry backs the disk up. The guest's file systems are frozen through its
 * agent around the snapshot (as guest processing will do), so the restored ext4 is clean without
 * journal replay and holds every file the guest synced before the snapshot.
 */
describe('live guest: QEMU VM backed up while it writes (slow)', function () {
  const t = tempDir('ferry-live-');
  let vm: TestVm | undefined;
  let job: string;
  let frozenAtRound = 0;
  let pointId = '';

  before(async function () {
    await skipUnlessGuestCanBoot(this);
    const disk = path.join(t.dir, 'data.qcow2');
    await makeDataDisk(disk, 64, 'qcow2');
    vm = await startVm({ dir: path.join(t.dir, 'vm'), disk, format: 'qcow2', workload: 'writer' });
    // every one of the writer's files exists once it has done more rounds than there are files
    await vm.waitForConsole((log) => lastWriterRound(log) > WRITER_LAYOUT.files + 1, 60_000);
    job = writeJob(
      t.dir,
      [
        'job: live',
        `source: { host: qemu, vms: [ { name: guest, qmp: "unix:${vm.qmpSocket}", disks: [disk0] } ] }`,
        'transport: auto',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
  });
  after(async function () {
    this.timeout(60_000);
    await vm?.stop();
    t.cleanup();
  });

  it('backs up the running guest with its file systems frozen only around the snapshot', async function () {
    this.timeout(120_000);
    const nbdSocket = path.join(path.dirname(vm!.qmpSocket), 'guest.ferry-nbd.sock');
    expect(await vm!.agent('guest-fsfreeze-freeze')).to.equal(1);
    frozenAtRound = lastWriterRound(vm!.consoleLog());
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (b) => (out += b));
    child.stderr.on('data', (b) => (err += b));
    const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && child.exitCode === null) {
        const exports = await listExports(nbdSocket).catch(() => []);
        if (exports.some((e) => e.startsWith('ferry-'))) break;
        await new Promise((r) => setTimeout(r, 20));
      }
    } finally {
      expect(await vm!.agent('guest-fsfreeze-thaw')).to.equal(1);
    }
    expect(await done, err).to.equal(0);
    const d = json<{ disks: { mode: string; transport: string; restorePoint: string }[] }>({ code: 0, signal: null, stdout: out, stderr: err }).disks[0];
    expect(d).to.include({ mode: 'full', transport: 'nbd' });
    pointId = d.restorePoint;
    await vm!.waitForConsole((log) => lastWriterRound(log) >= frozenAtRound + 2, 60_000); // the guest goes on writing
  });

  it('the next run, while the guest keeps writing, is incremental', async function () {
    this.timeout(120_000);
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const d = json<{ disks: { mode: string; modeReason: string; bytesRead: number; sizeBytes: number }[] }>(r).disks[0];
    expect(d.mode, d.modeReason).to.equal('incremental');
    expect(d.bytesRead).to.be.lessThan(d.sizeBytes / 4);
  });

  it('the restored ext4 passes e2fsck and holds the files the guest synced before the snapshot', async function () {
    this.timeout(120_000);
    const raw = path.join(t.dir, 'restored.raw');
    const r = await runFerry(['restore', job, '--vm', 'guest', '--disk', 'disk0', '--point', pointId, '--to', raw]);
    expect(r.code, r.stderr).to.equal(0);
    const fsck = await hostTool('e2fsck', ['-fn', raw]);
    expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
    const rounds: number[] = [];
    for (let f = 0; f < WRITER_LAYOUT.files; f++) {
      const name = `w${String(f).padStart(2, '0')}.dat`;
      const cat = await hostTool('debugfs', ['-R', `cat /${WRITER_LAYOUT.dir}/${name}`, raw]);
      rounds.push(checkWriterFile(Buffer.from(cat.stdout, 'latin1'), f));
    }
    // round N rewrites file N mod 8: the snapshot holds the rounds synced before the freeze (and at
    // most the one the freeze caught complete), each file whole
    const R = frozenAtRound;
    for (let round = R - WRITER_LAYOUT.files + 2; round <= R; round++) expect(rounds, `round ${round}`).to.include(round);
    expect(Math.max(...rounds)).to.be.at.most(R + 1);
  });
});
