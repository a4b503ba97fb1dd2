import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { QemuSourceHost } from './qemu-source-host.js';
import { QmpClient } from './qmp-client.js';
import { probeNbd } from './socket-address.js';
import { fleeceNames } from './ferry-names.js';
import { KiB, MiB, jobContext, openHost, overlayFiles, qemuObjects, qmpCommand, readDisk, take } from './testing/session-helpers.js';
import { listExports, nbdUri, readExport, StorageDaemon, TOOLS } from './testing/storage-daemon.js';

describe('qemu source host', function () {
  this.timeout(30_000);
  let qsd: StorageDaemon | undefined;

  before(function () {
    skipUnlessTools(this, TOOLS);
  });
  afterEach(async () => {
    await qsd?.stop();
    qsd = undefined;
  });

  describe('inventory', function () {
    it('finds the named disk with its size and format', async function () {
      qsd = await StorageDaemon.start({ sizeBytes: 8 * MiB });
      const host = new QemuSourceHost(jobContext('j'));
      const [vm] = await host.inventory([{ name: 'vm1', disks: ['disk0'], options: { qmp: qsd.qmp } }]);
      expect(vm).to.deep.equal({ name: 'vm1', disks: [{ name: 'disk0', size: 8 * MiB, format: 'qcow2' }] });
      expect(host.label).to.equal(`qemu:${qsd.qmp}`);
    });

    it('without disks: takes every writable root node, not their file nodes', async function () {
      qsd = await StorageDaemon.start({ disks: ['disk0', 'disk1'], writableExports: true });
      const host = new QemuSourceHost(jobContext('j'));
      const [vm] = await host.inventory([{ name: 'vm1', options: { qmp: qsd.qmp } }]);
      expect(vm.disks.map((d) => d.name)).to.deep.equal(['disk0', 'disk1']);
    });

    it('an unknown disk is SOURCE_DISK_NOT_FOUND at its key in the job file', async function () {
      qsd = await StorageDaemon.start();
      const err = (await new QemuSourceHost(jobContext('j'))
        .inventory([{ name: 'vm1', disks: ['disk0', 'nope'], options: { qmp: qsd.qmp } }])
        .catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.code).to.equal('SOURCE_DISK_NOT_FOUND');
      expect(err.where).to.include({ path: 'source.vms.0.disks.1', line: 9, disk: 'nope', vm: 'vm1' });
      expect(err.message).to.include('disk0');
    });

    it('an unreachable monitor is SOURCE_UNREACHABLE at the qmp key, naming the address', async function () {
      const err = (await new QemuSourceHost(jobContext('j'))
        .inventory([{ name: 'vm1', options: { qmp: 'unix:/nonexistent/ferry/qmp.sock' } }])
        .catch((e: unknown) => e)) as FerryError;
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.where).to.include({ path: 'source.vms.0.qmp', vm: 'vm1' });
      expect(err.message).to.include('/nonexistent/ferry/qmp.sock');
    });

    it('a malformed address is JOB_INVALID at its key', async function () {
      const err = (await new QemuSourceHost(jobContext('j'))
        .inventory([{ name: 'vm1', options: { qmp: 'unix:/x.sock', nbd: 'http://x' } }])
        .catch((e: unknown) => e)) as FerryError;
      expect(err.code).to.equal('JOB_INVALID');
      expect(err.where).to.include({ path: 'source.vms.0.nbd' });
    });
  });

  describe('snapshot', function () {
    it('reads the block state once per step on a VM with nothing to clean up, its five queries sent together', async function () {
      qsd = await StorageDaemon.start();
      const host = await openHost(qsd);
      const inv = await host.inventory([{ name: qsd.vm, options: { qmp: qsd.qmp } }]);
      const original = QmpClient.prototype.execute;
      const log: { command: string; inFlight: number }[] = [];
      let inFlight = 0;
      QmpClient.prototype.execute = function (this: QmpClient, command: string, ...rest: unknown[]) {
        log.push({ command, inFlight: inFlight++ });
        return (original as (...a: unknown[]) => Promise<unknown>).call(this, command, ...rest).finally(() => inFlight--);
      } as typeof original;
      let snap;
      try {
        snap = await host.snapshot(inv[0], { job: 'j', sessionId: '20260101T000000000Z-aaaaaa' });
      } finally {
        QmpClient.prototype.execute = original;
      }
      await snap.release('failed');
      // one state read before the clean-up (nothing to clean: no second read), then the snapshot's steps
      expect(log.filter((c) => c.command === 'query-named-block-nodes')).to.have.length(1);
      const read = log.findIndex((c) => c.command === 'query-named-block-nodes');
      expect(log.slice(read, read + 5).map((c) => c.inFlight)).to.deep.equal([0, 1, 2, 3, 4]);
    });

    it('first run: full with a reason, and the export keeps the point-in-time content while the guest writes', async function () {
      qsd = await StorageDaemon.start({ writableExports: true });
      await qsd.write('disk0', 0, 1 * MiB, 0x11);
      const guest = nbdUri(qsd.nbdPath, 'disk0');
      const before = await readExport(guest);
      const host = await openHost(qsd);
      const t = await take(host, qsd, 'j');
      expect(t.disk).to.include({ name: 'disk0', size: 4 * MiB, format: 'raw' });
      expect(t.disk.path).to.equal(undefined);
      expect(t.disk.changes).to.equal(undefined);
      expect(t.disk.fullReason).to.equal('no previous restore point of this job');
      expect(t.disk.changeTracking).to.deep.equal({ id: `ferry.j.${t.id}`, node: 'disk0' });
      expect(t.disk.nbd).to.deep.equal({ address: `unix:${qsd.nbdPath}`, exportName: `ferry-${t.id}-0` });

      await qsd.write('disk0', 128 * KiB, 64 * KiB, 0x22);
      await qsd.write('disk0', 2 * MiB, 64 * KiB, 0x33);
      expect((await readExport(guest)).equals(before)).to.equal(false);
      expect((await readDisk(t.disk)).equals(before)).to.equal(true);

      await t.snap.release('success');
      const after = await qemuObjects(qsd);
      expect(after.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
      expect(after.exports).to.deep.equal(['disk0-guest']);
      expect(after.jobs).to.deep.equal([]);
      expect(after.bitmaps).to.deep.equal([{ name: `ferry.j.${t.id}`, recording: true }]);
      expect(overlayFiles(qsd)).to.deep.equal([]);
      await t.snap.release('success'); // a second release finds nothing to do
    });

    it('check() fails once the fleecing job has ended', async function () {
      qsd = await StorageDaemon.start({ writableExports: true });
      const t = await take(await openHost(qsd), qsd, 'j');
      await t.snap.check!();
      await qmpCommand(qsd, 'block-job-cancel', { device: fleeceNames('j', t.id, 0, qsd.dir).node, force: true });
      await new Promise((r) => setTimeout(r, 200));
      const err = (await t.snap.check!().catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.message).to.match(/fleecing job ferry-fleece-\S+ of disk disk0 has ended/);
      await t.snap.release('failed').catch(() => undefined); // names the ended job; removes the rest
      expect(overlayFiles(qsd)).to.deep.equal([]);
    });

    it('snapshots every disk in one go, starts the NBD server when none runs, and stops it in release', async function () {
      qsd = await StorageDaemon.start({ disks: ['disk0', 'disk1'] });
      const host = await openHost(qsd);
      const t = await take(host, qsd, 'j');
      expect(t.snap.disks.map((d) => [d.name, d.nbd?.exportName, d.changeTracking?.node])).to.deep.equal([
        ['disk0', `ferry-${t.id}-0`, 'disk0'],
        ['disk1', `ferry-${t.id}-1`, 'disk1'],
      ]);
      expect((await listExports(qsd.nbdPath)).sort()).to.deep.equal([`ferry-${t.id}-0`, `ferry-${t.id}-1`]);
      expect((await readDisk(t.snap.disks[1])).length).to.equal(4 * MiB);
      expect(overlayFiles(qsd)).to.have.length(2);
      await t.snap.release('success');
      expect(overlayFiles(qsd)).to.deep.equal([]);
      expect(await probeNbd({ type: 'unix', path: qsd.nbdPath }, 500)).to.equal(false);
    });

    it('a failure half-way undoes everything it did, and tracking stays incremental', async function () {
      qsd = await StorageDaemon.start();
      const host = new QemuSourceHost(jobContext('j'));
      const bad = { qmp: qsd.qmp, nbd: 'unix:/nonexistent/dir/nbd.sock' };
      const good = await openHost(qsd);
      const first = await take(good, qsd, 'j');
      await first.snap.release('success');
      const [vm] = await host.inventory([{ name: 'vm1', options: bad }]);
      const err = (await host
        .snapshot(vm, { job: 'j', sessionId: 'S2', previous: { id: first.id, disks: [{ name: 'disk0', sizeBytes: 4 * MiB, changeTracking: first.disk.changeTracking }] } })
        .catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.message).to.include('nbd-server-start');
      const left = await qemuObjects(qsd);
      expect(left.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
      expect(left.jobs).to.deep.equal([]);
      expect(left.bitmaps).to.deep.equal([{ name: `ferry.j.${first.id}`, recording: true }]);
      expect(overlayFiles(qsd)).to.deep.equal([]);
      const next = await take(good, qsd, 'j', first);
      expect(next.disk.changes).to.deep.equal({ since: first.id });
      await next.snap.release('success');
    });
  });
});
