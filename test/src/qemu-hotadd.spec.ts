import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, skipUnlessTools } from '@ferry/core/testing';
import { QmpClient } from '@ferry/source-qemu';
import { listExports, nbdUri, readExport, StorageDaemon, TOOLS } from '@ferry/source-qemu/dist/testing/storage-daemon.js';
import { FERRY_BIN, json, runFerry, tempDir, writeJob } from './support/helpers.js';

/**
 * Hot-add from a running QEMU: qemu-storage-daemon holds a qcow2 disk that the "guest" writes through
 * a writable NBD export. With `snapshot: auto` the QEMU source host takes an external snapshot, so the
 * disk's image stands still while the guest writes into an overlay; `transport: auto` finds the image
 * readable and picks hot-add; incremental runs read only the ranges of the job's dirty bitmap, which
 * the host hands over as extents. Release commits the overlay back. Every point restores to the
 * guest's content at its snapshot.
 */
interface DiskJson {
  transport: string;
  transportReason: string;
  mode: string;
  modeReason: string;
  bytesRead: number;
  restorePoint: string;
  blocks: { total: number; unchanged: number };
}

const MiB = 1024 * 1024;
const KiB = 1024;
const BLOCK = 256 * KiB;

describe('QEMU source with hot-add: external snapshots and dirty bitmaps, end to end', function () {
  this.timeout(120_000);
  const t = tempDir();
  let qsd: StorageDaemon;
  let job: string;
  const points: { id: string; copy: string }[] = [];

  async function guestCopy(name: string): Promise<string> {
    const file = path.join(t.dir, name);
    writeFileSync(file, await readExport(nbdUri(qsd.nbdPath, 'disk0')));
    return file;
  }

  async function backup(): Promise<DiskJson> {
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const d = json<{ disks: DiskJson[] }>(r).disks[0];
    expect(d.transport, d.transportReason).to.equal('hotadd');
    return d;
  }

  /** Starts a backup in a child process and resolves once its snapshot exists (bounded). */
  async function backupInBackground(): Promise<{ child: ReturnType<typeof spawn>; out: () => string; done: Promise<number | null> }> {
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout!.on('data', (b) => (out += b));
    const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      if ((await listExports(qsd.nbdPath)).some((e) => e.startsWith('ferry-snap-'))) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    return { child, out: () => out, done };
  }

  async function ferryNodes(): Promise<string[]> {
    const qmp = await QmpClient.connect(qsd.qmp);
    try {
      const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
      return nodes.map((n) => n['node-name']).filter((n) => n.startsWith('ferry'));
    } finally {
      await qmp.close();
    }
  }

  before(async function () {
    skipUnlessTools(this, TOOLS); // npm test installs the Debian packages when it can
    qsd = await StorageDaemon.start({ disks: ['disk0'], sizeBytes: 96 * MiB, writableExports: true });
    for (const [off, len, pat] of [[0, 8 * MiB, 0x11], [20 * MiB, 30 * MiB, 0x22], [70 * MiB, 3 * MiB, 0x33]]) await qsd.write('disk0', off, len, pat);
    job = writeJob(
      t.dir,
      [
        'job: qemu-hotadd',
        'source:',
        '  host: qemu',
        '  vms:',
        `    - { name: ${qsd.vm}, qmp: "${qsd.qmp}", disks: [disk0], snapshot: auto }`,
        'transport: auto',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
  });
  after(async () => {
    await qsd?.stop();
    t.cleanup();
  });

  it('the first run is a full read of the image by hot-add, chosen by auto with a reason', async function () {
    const copy = await guestCopy('v1.raw');
    const d = await backup();
    expect(d.transportReason).to.match(new RegExp(`^auto: datastore path ${qsd.image('disk0')} \\(qcow2.*\\) is readable from this proxy`));
    expect(d.mode).to.equal('full');
    expect(d.modeReason).to.match(/^full read: /);
    expect(d.bytesRead).to.be.lessThan(45 * MiB); // unallocated clusters are not read
    expect(await ferryNodes()).to.deep.equal([]);
    points.push({ id: d.restorePoint, copy });
  });

  it('the next run reads only what the guest wrote since, from the dirty bitmap', async function () {
    for (const off of [1 * MiB, 33 * MiB + 4 * KiB, 90 * MiB]) await qsd.write('disk0', off, 64 * KiB, 0x44);
    const copy = await guestCopy('v2.raw');
    const d = await backup();
    expect(d.mode, d.modeReason).to.equal('incremental');
    expect(d.modeReason).to.include(points[0].id);
    expect(d.bytesRead).to.be.at.least(3 * 64 * KiB).and.at.most(3 * BLOCK);
    expect(d.blocks.unchanged).to.equal(d.blocks.total - 3);
    points.push({ id: d.restorePoint, copy });
  });

  it('writes during a backup are not in its point; release commits them and the next run reads them', async function () {
    await qsd.write('disk0', 10 * MiB, 1 * MiB, 0x55);
    const copy = await guestCopy('v3.raw');
    const run = await backupInBackground();
    await qsd.write('disk0', 60 * MiB, 1 * MiB, 0x66); // after the snapshot: into the overlay
    expect(await run.done).to.equal(0);
    const d = (JSON.parse(run.out()) as { disks: DiskJson[] }).disks[0];
    expect(d.mode).to.equal('incremental');
    expect(d.bytesRead).to.be.at.most(1 * MiB);
    points.push({ id: d.restorePoint, copy });
    expect(await ferryNodes()).to.deep.equal([]);

    const next = await backup();
    expect(next.mode, next.modeReason).to.equal('incremental');
    expect(next.bytesRead).to.equal(1 * MiB); // exactly the write that landed during the last backup
    points.push({ id: next.restorePoint, copy: await guestCopy('v4.raw') });
  });

  it('a session killed mid-run leaves its overlay; the next run commits it and stays incremental', async function () {
    await qsd.write('disk0', 50 * MiB, 512 * KiB, 0x77);
    const run = await backupInBackground();
    run.child.kill('SIGKILL');
    await run.done;
    // The kill comes within a few ms of the snapshot; reading and committing the point take longer.
    expect(await ferryNodes(), 'the killed session left its overlay').to.have.length(2);
    await qsd.write('disk0', 51 * MiB, 256 * KiB, 0x78); // into the dead session's overlay
    const copy = await guestCopy('v5.raw');
    const d = await backup();
    expect(d.mode, d.modeReason).to.equal('incremental');
    expect(d.bytesRead).to.be.at.most(768 * KiB);
    points.push({ id: d.restorePoint, copy });
    expect(await ferryNodes()).to.deep.equal([]);
    expect((await listExports(qsd.nbdPath)).filter((e) => e.startsWith('ferry-'))).to.deep.equal([]);
  });

  it('every restore point restores to the guest content at its snapshot', async function () {
    expect(points).to.have.length(5);
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}.raw`);
      const r = await runFerry(['restore', job, '--vm', qsd.vm, '--disk', 'disk0', '--point', p.id, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out), p.id).to.equal(-1);
    }
  });
});
