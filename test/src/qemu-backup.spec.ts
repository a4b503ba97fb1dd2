import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, skipUnlessTools } from '@ferry/core/testing';
import { QmpClient } from '@ferry/source-qemu';
import { listExports, nbdUri, readExport, StorageDaemon, TOOLS } from '@ferry/source-qemu/dist/testing/storage-daemon.js';
import { FERRY_BIN, json, runFerry, tempDir, writeJob } from './support/helpers.js';

/**
 * A live "host": qemu-storage-daemon with a qcow2 disk, its QMP monitor and an NBD server on unix
 * sockets; the guest's writes go through a writable NBD export of the disk. Ferry backs it up with
 * the QEMU source host and `transport: auto` (no datastore path, so NBD), incremental runs read the
 * job's dirty bitmap, and every point restores to the guest's content at its snapshot.
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

describe('QEMU/KVM source over QMP with NBD and dirty bitmaps, end to end', function () {
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
    return json<{ disks: DiskJson[] }>(r).disks[0];
  }

  before(async function () {
    skipUnlessTools(this, TOOLS); // npm test installs the Debian packages when it can
    qsd = await StorageDaemon.start({ disks: ['disk0'], sizeBytes: 96 * MiB, writableExports: true });
    for (const [off, len, pat] of [[0, 8 * MiB, 0x11], [20 * MiB, 30 * MiB, 0x22], [70 * MiB, 3 * MiB, 0x33]]) await qsd.write('disk0', off, len, pat);
    job = writeJob(
      t.dir,
      [
        'job: qemu-e2e',
        'source:',
        '  host: qemu',
        '  vms:',
        `    - { name: ${qsd.vm}, qmp: "${qsd.qmp}", disks: [disk0], nbd: "unix:${qsd.nbdPath}" }`,
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

  it('the first run is a full read through NBD, chosen by auto with a reason', async function () {
    const copy = await guestCopy('v1.raw');
    const d = await backup();
    expect(d.transport).to.equal('nbd');
    expect(d.transportReason).to.match(/^auto: NBD/);
    expect(d.mode).to.equal('full');
    expect(d.bytesRead).to.be.lessThan(45 * MiB); // holes (unallocated clusters) are not read
    points.push({ id: d.restorePoint, copy });
  });

  it('the next run reads only what the guest wrote since (dirty bitmap)', async function () {
    for (const off of [1 * MiB, 33 * MiB + 4 * KiB, 90 * MiB]) await qsd.write('disk0', off, 64 * KiB, 0x44);
    const copy = await guestCopy('v2.raw');
    const d = await backup();
    expect(d.mode, d.modeReason).to.equal('incremental');
    expect(d.modeReason).to.include(points[0].id);
    expect(d.bytesRead).to.be.at.least(3 * 64 * KiB).and.at.most(3 * 256 * KiB);
    expect(d.blocks.unchanged).to.equal(d.blocks.total - 3);
    points.push({ id: d.restorePoint, copy });
  });

  it('writes that land while a backup runs are not in its restore point', async function () {
    await qsd.write('disk0', 10 * MiB, 1 * MiB, 0x55);
    const copy = await guestCopy('v3.raw');
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      if ((await listExports(qsd.nbdPath)).some((e) => e.startsWith('ferry-'))) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    await qsd.write('disk0', 10 * MiB, 1 * MiB, 0x66); // after the snapshot: copy-before-write keeps the old data
    expect(await done).to.equal(0);
    points.push({ id: JSON.parse(out).disks[0].restorePoint, copy });
  });

  it('a deleted bitmap makes the next run full, saying why; the run after is incremental again', async function () {
    const qmp = await QmpClient.connect(qsd.qmp);
    try {
      const bitmaps = (await qmp.execute<{ 'dirty-bitmaps'?: { name: string }[]; 'node-name': string }[]>('query-named-block-nodes', { flat: true }))
        .filter((n) => n['node-name'] === 'disk0')
        .flatMap((n) => (n['dirty-bitmaps'] ?? []).map((b) => b.name))
        .filter((n) => n.startsWith('ferry.qemu-e2e.'));
      expect(bitmaps, 'the job owns exactly one bitmap between runs').to.have.length(1);
      await qmp.execute('block-dirty-bitmap-remove', { node: 'disk0', name: bitmaps[0] });
    } finally {
      await qmp.close();
    }
    await qsd.write('disk0', 40 * MiB, 64 * KiB, 0x77);
    const full = await backup();
    expect(full.mode).to.equal('full');
    expect(full.modeReason).to.include('ferry.qemu-e2e.');
    points.push({ id: full.restorePoint, copy: await guestCopy('v4.raw') });
    await qsd.write('disk0', 41 * MiB, 64 * KiB, 0x78);
    const copy = await guestCopy('v5.raw');
    const again = await backup();
    expect(again.mode, again.modeReason).to.equal('incremental');
    points.push({ id: again.restorePoint, copy });
  });

  it('a session killed mid-run is cleaned up by the next one, which succeeds', async function () {
    await qsd.write('disk0', 50 * MiB, 4 * MiB, 0x88);
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      if ((await listExports(qsd.nbdPath)).some((e) => e.startsWith('ferry-'))) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    await exited;
    const copy = await guestCopy('v6.raw');
    const d = await backup();
    points.push({ id: d.restorePoint, copy });
    expect((await listExports(qsd.nbdPath)).filter((e) => e.startsWith('ferry-'))).to.deep.equal([]);
  });

  it('Ctrl-C during a backup releases the snapshot and commits nothing; the next run succeeds', async function () {
    const before = json<{ restorePoints: unknown[] }>(await runFerry(['list', job, '--json'])).restorePoints.length;
    await qsd.write('disk0', 60 * MiB, 8 * MiB, 0x99);
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (b) => (out += b));
    const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      if ((await listExports(qsd.nbdPath)).some((e) => e.startsWith('ferry-'))) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    const code = await done;
    if (code === 130) {
      const report = JSON.parse(out) as { vms: { status: string; error: { code: string } }[] };
      expect(report.vms[0].error.code).to.equal('SESSION_INTERRUPTED');
      expect(json<{ restorePoints: unknown[] }>(await runFerry(['list', job, '--json'])).restorePoints).to.have.length(before);
    } else {
      expect(code, 'the backup finished before the signal arrived').to.equal(0);
    }
    expect((await listExports(qsd.nbdPath)).filter((e) => e.startsWith('ferry-')), 'snapshot released').to.deep.equal([]);
    const copy = await guestCopy('v7.raw');
    const d = await backup();
    expect(d.mode, d.modeReason).to.equal('incremental');
    points.push({ id: d.restorePoint, copy });
  });

  it('every restore point restores to the guest content at its snapshot', async function () {
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}.raw`);
      const r = await runFerry(['restore', job, '--vm', qsd.vm, '--disk', 'disk0', '--point', p.id, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out), p.id).to.equal(-1);
    }
  });
});
