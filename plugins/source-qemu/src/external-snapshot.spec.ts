import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { readBlockState } from './block-state.js';
import { commitOverlay } from './external-snapshot.js';
import { overlayNames } from './ferry-names.js';
import { QmpClient } from './qmp-client.js';
import { probeNbd } from './socket-address.js';
import { QemuSourceHost } from './qemu-source-host.js';
import { KiB, MiB, jobContext, openHost, overlayFiles, pointOf, qemuObjects, qmpCommand, readDisk, take, type Taken } from './testing/session-helpers.js';
import { nbdUri, readExport, readImage, StorageDaemon, TOOLS } from './testing/storage-daemon.js';

const AUTO = { snapshot: 'auto' };

/**
 * `snapshot: auto` on a daemon whose images this process can open: every disk gets an external
 * snapshot, its image path is offered for hot-add, and the writes the guest makes meanwhile go to an
 * overlay that release commits back. These specs prove what the design relies on in this QEMU.
 */
describe('qemu snapshot: external snapshots for hot-add', function () {
  this.timeout(30_000);
  let qsd: StorageDaemon | undefined;

  before(function () {
    skipUnlessTools(this, TOOLS);
  });
  beforeEach(async () => {
    qsd = await StorageDaemon.start({ writableExports: true });
  });
  afterEach(async () => {
    await qsd?.stop();
    qsd = undefined;
  });

  const guest = (): Promise<Buffer> => readExport(nbdUri(qsd!.nbdPath, 'disk0'));
  const takeAuto = async (job: string, previous?: Taken): Promise<Taken> => take(await openHost(qsd!, job, undefined, AUTO), qsd!, job, previous, AUTO);

  it('offers the image path, whose content stays the guest view at the snapshot while the guest writes', async function () {
    await qsd!.write('disk0', 0, 1 * MiB, 0x11);
    const before = await guest();
    const t = await takeAuto('j');
    const names = overlayNames('external', 'j', t.id, 0, qsd!.dir);
    expect(t.disk).to.include({ name: 'disk0', size: 4 * MiB, format: 'qcow2', path: qsd!.image('disk0') });
    expect(t.disk.nbd).to.deep.equal({ address: `unix:${qsd!.nbdPath}`, exportName: names.node });
    expect(t.disk.fullReason).to.equal('no previous restore point of this job');
    expect(t.disk.changeTracking).to.deep.equal({ id: `ferry.j.${t.id}`, node: 'disk0' });

    await qsd!.write('disk0', 128 * KiB, 64 * KiB, 0x22);
    await qsd!.write('disk0', 2 * MiB, 64 * KiB, 0x33);
    const during = await guest();
    expect(during.equals(before)).to.equal(false);
    expect((await readImage(t.disk.path!)).equals(before)).to.equal(true);
    expect((await readDisk(t.disk)).equals(before)).to.equal(true); // the same view over NBD

    await t.snap.release('success');
    const after = await qemuObjects(qsd!);
    expect(after.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(after.exports).to.deep.equal(['disk0-guest']);
    expect(after.jobs).to.deep.equal([]);
    expect(after.bitmaps).to.deep.equal([{ name: `ferry.j.${t.id}`, recording: true }]);
    expect(overlayFiles(qsd!)).to.deep.equal([]);
    expect((await guest()).equals(during)).to.equal(true); // the writes made during the backup were committed
    await qsd!.write('disk0', 3 * MiB, 64 * KiB, 0x44); // and the disk's node is writable again
    await t.snap.release('success');
  });

  it('one transaction mixes kinds: an external snapshot of one disk, fleecing of another', async function () {
    await qsd!.stop();
    qsd = await StorageDaemon.start({ disks: ['disk0', 'disk1'], writableExports: true });
    const hk = new QemuSourceHost(jobContext('k'));
    const [vmk] = await hk.inventory([{ name: qsd.vm, disks: ['disk1'], options: { qmp: qsd.qmp } }]);
    const k1 = await hk.snapshot(vmk, { job: 'k', sessionId: 'K1' }); // fleecing of disk1 stays open
    const t = await takeAuto('j');
    const [d0, d1] = t.snap.disks;
    expect(d0).to.include({ name: 'disk0', path: qsd.image('disk0'), format: 'qcow2' });
    expect(d1).to.include({ name: 'disk1', format: 'raw' });
    expect(d1.path).to.equal(undefined);
    expect(d1.fullReason).to.match(/hot-add not offered for disk1: another job's fleecing snapshot/);
    expect((await readDisk(d1)).length).to.equal(4 * MiB);
    await t.snap.release('success');
    await k1.release('success');
    expect((await qemuObjects(qsd)).nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(overlayFiles(qsd)).to.deep.equal([]);
  });

  it('a disk that nothing uses (no export, no device) is writable again after release, with its NBD server stopped', async function () {
    await qsd!.stop();
    qsd = await StorageDaemon.start();
    const t1 = await takeAuto('j');
    expect(t1.disk.path).to.equal(qsd.image('disk0'));
    await t1.snap.release('success');
    const t2 = await takeAuto('j', t1); // bitmaps could be rotated: the node was writable again
    expect(t2.disk.changes).to.deep.equal({ since: t1.id, extents: [] });
    await t2.snap.release('success');
    expect((await qemuObjects(qsd)).bitmaps).to.deep.equal([{ name: `ferry.j.${t2.id}`, recording: true }]);
    expect((await qemuObjects(qsd)).nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(await probeNbd({ type: 'unix', path: qsd.nbdPath }, 500)).to.equal(false);
  });

  it('incremental extents are exactly the writes between two snapshots, those during a backup included', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 128 * KiB, 64 * KiB, 0x22);
    await qsd!.write('disk0', 1 * MiB + 64 * KiB, 128 * KiB, 0x33);
    const t2 = await takeAuto('j', t1);
    await qsd!.write('disk0', 3 * MiB, 64 * KiB, 0x44); // into the overlay: part of the next point
    expect(t2.disk.fullReason).to.equal(undefined);
    expect(t2.disk.changes).to.deep.equal({
      since: t1.id,
      extents: [
        { offset: 128 * KiB, length: 64 * KiB },
        { offset: 1 * MiB + 64 * KiB, length: 128 * KiB },
      ],
    });
    await t2.snap.release('success');
    await qsd!.write('disk0', 256 * KiB, 64 * KiB, 0x55);
    const t3 = await takeAuto('j', t2);
    expect(t3.disk.changes).to.deep.equal({
      since: t2.id,
      extents: [
        { offset: 256 * KiB, length: 64 * KiB },
        { offset: 3 * MiB, length: 64 * KiB },
      ],
    });
    await t3.snap.release('success');
    expect((await qemuObjects(qsd!)).bitmaps).to.deep.equal([{ name: `ferry.j.${t3.id}`, recording: true }]);
  });

  it('after release(failed) the next run is incremental against the older point and covers both intervals', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 256 * KiB, 64 * KiB, 0x22);
    const t2 = await takeAuto('j', t1);
    await qsd!.write('disk0', 2 * MiB, 64 * KiB, 0x33); // into the overlay of the failing session
    await t2.snap.release('failed');
    expect((await qemuObjects(qsd!)).bitmaps).to.deep.equal([{ name: `ferry.j.${t1.id}`, recording: true }]);
    const t3 = await takeAuto('j', t1);
    expect(t3.disk.changes?.extents).to.deep.equal([
      { offset: 256 * KiB, length: 64 * KiB },
      { offset: 2 * MiB, length: 64 * KiB },
    ]);
    await t3.snap.release('success');
  });

  it('a release whose commit fails keeps the overlay and every write; the next session commits it', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 0, 64 * KiB, 0x22);
    const t2 = await takeAuto('j', t1);
    const overlay = overlayNames('external', 'j', t2.id, 0, qsd!.dir).node;
    // A job that holds the commit's job id makes QEMU refuse the commit.
    await qmpCommand(qsd!, 'blockdev-create', { 'job-id': overlay, options: { driver: 'file', filename: `${qsd!.dir}/blocker`, size: 0 } });
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x33);
    const err = (await t2.snap.release('failed').catch((e: unknown) => e)) as FerryError;
    expect(err).to.be.instanceOf(FerryError);
    expect(err.message).to.match(/commit of overlay .* stays on top of node disk0 and holds the guest's writes/s);
    expect((await qemuObjects(qsd!)).nodes).to.include(overlay);
    const during = await guest();
    await qsd!.write('disk0', 2 * MiB, 64 * KiB, 0x44);

    const t3 = await takeAuto('j', t1);
    expect(t3.disk.fullReason).to.equal(undefined);
    expect(t3.disk.changes?.extents).to.deep.equal([
      { offset: 0, length: 64 * KiB },
      { offset: 1 * MiB, length: 64 * KiB },
      { offset: 2 * MiB, length: 64 * KiB },
    ]);
    expect((await readImage(t3.disk.path!)).subarray(0, 2 * MiB).equals(during.subarray(0, 2 * MiB))).to.equal(true);
    await t3.snap.release('success');
    expect((await qemuObjects(qsd!)).nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
  });

  it('a crashed session leaves its overlay on the disk; the next one commits it and stays incremental', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 0, 64 * KiB, 0x22);
    const crashed = await takeAuto('j', t1); // the process dies: no release
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x33); // lands in the crashed session's overlay
    const written = await guest();

    const t3 = await takeAuto('j', t1);
    expect(t3.disk.fullReason).to.equal(undefined);
    expect(t3.disk.changes?.extents).to.deep.equal([
      { offset: 0, length: 64 * KiB },
      { offset: 1 * MiB, length: 64 * KiB },
    ]);
    expect((await qemuObjects(qsd!)).nodes).to.not.include(crashed.disk.nbd!.exportName);
    expect((await readImage(t3.disk.path!)).equals(written)).to.equal(true);
    await t3.snap.release('success');
    const after = await qemuObjects(qsd!);
    expect(after.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(after.exports).to.deep.equal(['disk0-guest']);
    expect(after.jobs).to.deep.equal([]);
    expect(overlayFiles(qsd!)).to.deep.equal([]);
    expect((await guest()).equals(written)).to.equal(true);
  });

  it('check() fails when the overlay was committed behind its back; release still settles tracking', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.check!();
    await t1.snap.release('success');
    const t2 = await takeAuto('j', t1);
    await t2.snap.check!();
    const overlay = overlayNames('external', 'j', t2.id, 0, qsd!.dir).node;
    await qmpCommand(qsd!, 'block-export-del', { id: overlay, mode: 'hard' });
    const qmp = await QmpClient.connect(qsd!.qmp);
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x11); // into the overlay
    await commitOverlay(qmp, await readBlockState(qmp), overlay, 'disk0').finally(() => qmp.close()); // someone else commits
    await qsd!.write('disk0', 0, 64 * KiB, 0x22); // reaches the image hot-add was reading
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x33); // newer than what the detached overlay holds
    const err = (await t2.snap.check!().catch((e: unknown) => e)) as FerryError;
    expect(err).to.be.instanceOf(FerryError);
    expect(err.message).to.include(`overlay ${overlay} is no longer on top of disk disk0`);
    const before = await guest();
    await t2.snap.release('failed'); // removes the detached overlay without committing it again
    expect((await qemuObjects(qsd!)).nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect((await guest()).equals(before)).to.equal(true);
    expect(before[1 * MiB]).to.equal(0x33);
    const t3 = await takeAuto('j', t1);
    expect(t3.disk.changes?.extents).to.deep.equal([
      { offset: 0, length: 64 * KiB },
      { offset: 1 * MiB, length: 64 * KiB },
    ]);
    await t3.snap.release('success');
  });

  it('a snapshot that fails after its transaction commits the overlay back and leaves tracking as it was', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    // The daemon's NBD server listens elsewhere: the snapshot fails after its transaction.
    const wrongNbd = { ...AUTO, nbd: 'unix:/nonexistent/dir/nbd.sock' };
    const host = await openHost(qsd!, 'j', undefined, wrongNbd);
    const [vm] = await host.inventory([{ name: qsd!.vm, options: { qmp: qsd!.qmp, ...wrongNbd } }]);
    const err = (await host.snapshot(vm, { job: 'j', sessionId: 'S2', previous: pointOf(t1) }).catch((e: unknown) => e)) as FerryError;
    expect(err).to.be.instanceOf(FerryError);
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.include('already runs an NBD server');
    const left = await qemuObjects(qsd!);
    expect(left.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(left.jobs).to.deep.equal([]);
    expect(left.bitmaps).to.deep.equal([{ name: `ferry.j.${t1.id}`, recording: true }]);
    expect(overlayFiles(qsd!)).to.deep.equal([]);
    await qsd!.write('disk0', 0, 64 * KiB, 0x22);
    const t3 = await takeAuto('j', t1);
    expect(t3.disk.changes?.extents).to.deep.equal([{ offset: 0, length: 64 * KiB }]);
    await t3.snap.release('success');
  });

  it('QEMU died under an external snapshot: its image and bitmaps were saved, the stray overlay goes, the run stays incremental', async function () {
    const t1 = await takeAuto('j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 0, 64 * KiB, 0x22);
    const atSnapshot = await guest();
    await takeAuto('j', t1); // open when QEMU dies
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x33); // only in the overlay, which a restarted QEMU does not open
    await qsd!.kill();
    qsd = await StorageDaemon.start({ dir: qsd!.dir, writableExports: true });
    expect(overlayFiles(qsd)).to.have.length(1);
    expect((await guest()).equals(atSnapshot)).to.equal(true);
    const t3 = await takeAuto('j', t1);
    expect(t3.disk.fullReason).to.equal(undefined);
    expect(t3.disk.changes?.extents).to.deep.equal([{ offset: 0, length: 64 * KiB }]);
    expect(overlayFiles(qsd)).to.have.length(1); // the new session's own overlay only
    await t3.snap.release('success');
    expect(overlayFiles(qsd)).to.deep.equal([]);
  });
});
