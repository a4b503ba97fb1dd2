import path from 'node:path';
import { expect } from 'chai';
import { skipUnlessTools } from '@ferry/core/testing';
import { fleeceNames, jobFleecePrefix } from './ferry-names.js';
import { KiB, MiB, changed, openHost, overlayFiles, qemuObjects, qmpCommand, readDisk, take } from './testing/session-helpers.js';
import { listExports, StorageDaemon, TOOLS } from './testing/storage-daemon.js';

/** Changed-block tracking across sessions: how bitmaps rotate, recover and stay per job. */
describe('qemu snapshot: dirty bitmaps across sessions', function () {
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

  it('after a committed point the next run is incremental and its map shows exactly the writes between', async function () {
    const host = await openHost(qsd!);
    const t1 = await take(host, qsd!, 'j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 128 * KiB, 64 * KiB, 0x22);
    await qsd!.write('disk0', 1 * MiB + 64 * KiB, 128 * KiB, 0x33);
    const t2 = await take(host, qsd!, 'j', t1);
    await qsd!.write('disk0', 3 * MiB, 64 * KiB, 0x44); // after the snapshot: not part of this point
    expect(t2.disk.changes).to.deep.equal({ since: t1.id });
    expect(t2.disk.fullReason).to.equal(undefined);
    expect(t2.disk.nbd?.bitmap).to.equal(`ferry.j.${t1.id}`);
    expect(await changed(t2.disk)).to.deep.equal([
      { offset: 128 * KiB, length: 64 * KiB },
      { offset: 1 * MiB + 64 * KiB, length: 128 * KiB },
    ]);
    await t2.snap.release('success');
    expect((await qemuObjects(qsd!)).bitmaps).to.deep.equal([{ name: `ferry.j.${t2.id}`, recording: true }]);
  });

  it('a deleted bitmap makes the next run full, naming it; the run after is incremental again', async function () {
    const host = await openHost(qsd!);
    const t1 = await take(host, qsd!, 'j');
    await t1.snap.release('success');
    await qmpCommand(qsd!, 'block-dirty-bitmap-remove', { node: 'disk0', name: `ferry.j.${t1.id}` });
    const t2 = await take(host, qsd!, 'j', t1);
    expect(t2.disk.changes).to.equal(undefined);
    expect(t2.disk.fullReason).to.equal(`bitmap ferry.j.${t1.id} is missing on node disk0 (deleted, or QEMU stopped before saving it?)`);
    await t2.snap.release('success');
    await qsd!.write('disk0', 0, 64 * KiB, 0x55);
    const t3 = await take(host, qsd!, 'j', t2);
    expect(t3.disk.changes).to.deep.equal({ since: t2.id });
    expect(await changed(t3.disk)).to.deep.equal([{ offset: 0, length: 64 * KiB }]);
    await t3.snap.release('success');
  });

  it('after release(failed) the next run is incremental against the older point and covers both intervals', async function () {
    const host = await openHost(qsd!);
    const t1 = await take(host, qsd!, 'j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 256 * KiB, 64 * KiB, 0x22); // before the failed session's snapshot
    const t2 = await take(host, qsd!, 'j', t1);
    await qsd!.write('disk0', 2 * MiB, 64 * KiB, 0x33); // while the failed session ran
    await t2.snap.release('failed');
    expect((await qemuObjects(qsd!)).bitmaps).to.deep.equal([{ name: `ferry.j.${t1.id}`, recording: true }]);
    await qsd!.write('disk0', 3 * MiB, 64 * KiB, 0x44); // after it
    const t3 = await take(host, qsd!, 'j', t1);
    expect(t3.disk.changes).to.deep.equal({ since: t1.id });
    expect(await changed(t3.disk)).to.deep.equal([
      { offset: 256 * KiB, length: 64 * KiB },
      { offset: 2 * MiB, length: 64 * KiB },
      { offset: 3 * MiB, length: 64 * KiB },
    ]);
    await t3.snap.release('success');
  });

  it('a crashed session (no release) is cleaned up by the next snapshot, which stays incremental', async function () {
    const t1 = await take(await openHost(qsd!), qsd!, 'j');
    await t1.snap.release('success');
    await qsd!.write('disk0', 0, 64 * KiB, 0x22);
    const crashed = await take(await openHost(qsd!), qsd!, 'j', t1); // the process dies: no release
    await qsd!.write('disk0', 1 * MiB, 64 * KiB, 0x33);
    expect(overlayFiles(qsd!)).to.have.length(1);

    const host = await openHost(qsd!);
    const t3 = await take(host, qsd!, 'j', t1);
    const during = await qemuObjects(qsd!);
    expect(during.exports).to.not.include(crashed.disk.nbd!.exportName);
    expect(during.bitmaps.map((b) => b.name)).to.not.include(`ferry.j.${crashed.id}`);
    expect(t3.disk.fullReason).to.equal(undefined);
    expect(t3.disk.changes).to.deep.equal({ since: t1.id });
    expect(await changed(t3.disk)).to.deep.equal([
      { offset: 0, length: 64 * KiB },
      { offset: 1 * MiB, length: 64 * KiB },
    ]);
    await t3.snap.release('success');
    const after = await qemuObjects(qsd!);
    expect(after.nodes.filter((n) => n.startsWith('ferry'))).to.deep.equal([]);
    expect(after.exports).to.deep.equal(['disk0-guest']);
    expect(after.jobs).to.deep.equal([]);
    expect(overlayFiles(qsd!)).to.deep.equal([]);
  });

  it('a crashed first session: the next run is full and says it cleaned the leftovers', async function () {
    await take(await openHost(qsd!), qsd!, 'j'); // no release
    // ... and one that died while QEMU created its overlay image (such jobs wait to be dismissed)
    const dying = `${jobFleecePrefix('j')}abcdef-0`;
    await qmpCommand(qsd!, 'blockdev-create', { 'job-id': `${dying}-create-file`, options: { driver: 'file', filename: path.join(qsd!.dir, `${dying}.qcow2`), size: 0 } });
    await new Promise((r) => setTimeout(r, 200));
    expect((await qemuObjects(qsd!)).jobs).to.include(`${dying}-create-file`);
    const t = await take(await openHost(qsd!), qsd!, 'j');
    expect((await qemuObjects(qsd!)).jobs).to.deep.equal([fleeceNames('j', t.id, 0, qsd!.dir).node]); // its own backup job only
    expect(overlayFiles(qsd!)).to.deep.equal([path.basename(fleeceNames('j', t.id, 0, qsd!.dir).file)]);
    expect(t.disk.fullReason).to.match(/^no previous restore point of this job; .*removed leftover bitmap ferry\.j\.\S+ of an interrupted session/);
    expect(t.disk.fullReason).to.match(/removed fleecing overlay ferry-fleece-\S+ and export ferry-\S+ of an interrupted session/);
    await t.snap.release('success');
    expect((await qemuObjects(qsd!)).bitmaps).to.deep.equal([{ name: `ferry.j.${t.id}`, recording: true }]);
  });

  it('two jobs on one VM keep their own bitmaps; one job\'s sessions never touch the other\'s', async function () {
    const hj = await openHost(qsd!, 'j');
    const hk = await openHost(qsd!, 'k');
    const j1 = await take(hj, qsd!, 'j');
    const k1 = await take(hk, qsd!, 'k'); // k's snapshot runs while j's is open
    expect(await listExports(qsd!.nbdPath)).to.include.members([j1.disk.nbd!.exportName, k1.disk.nbd!.exportName]);
    await j1.snap.release('success');
    await qsd!.write('disk0', 512 * KiB, 64 * KiB, 0x66);
    const j2 = await take(hj, qsd!, 'j', j1); // j cleans its leftovers: k's open snapshot must survive
    expect((await readDisk(k1.disk)).length).to.equal(4 * MiB);
    expect(j2.disk.fullReason).to.equal(undefined);
    expect(j2.disk.changes).to.deep.equal({ since: j1.id });
    await j2.snap.release('success');
    await k1.snap.release('success');
    const k2 = await take(hk, qsd!, 'k', k1);
    expect(k2.disk.changes).to.deep.equal({ since: k1.id });
    expect(await changed(k2.disk)).to.deep.equal([{ offset: 512 * KiB, length: 64 * KiB }]);
    await k2.snap.release('success');
    expect((await qemuObjects(qsd!)).bitmaps.map((b) => b.name).sort()).to.deep.equal([`ferry.j.${j2.id}`, `ferry.k.${k2.id}`].sort());
  });

  it('after QEMU itself crashed, inconsistent bitmaps make the run full, and stray overlay files go', async function () {
    const t1 = await take(await openHost(qsd!), qsd!, 'j');
    await t1.snap.release('success');
    await qsd!.shutdown(); // the bitmap is saved in the image, and marked in use when loaded again
    qsd = await StorageDaemon.start({ dir: qsd!.dir, writableExports: true });
    await take(await openHost(qsd!), qsd!, 'j', t1); // open when QEMU dies
    await qsd!.kill();
    qsd = await StorageDaemon.start({ dir: qsd!.dir, writableExports: true });
    expect(overlayFiles(qsd)).to.have.length(1);
    const t3 = await take(await openHost(qsd), qsd, 'j', t1);
    expect(t3.disk.changes).to.equal(undefined);
    expect(t3.disk.fullReason).to.match(new RegExp(`^bitmap ferry\\.j\\.${t1.id} is inconsistent`));
    expect(overlayFiles(qsd)).to.have.length(1); // the new session's own overlay only
    await t3.snap.release('success');
    expect((await qemuObjects(qsd)).bitmaps).to.deep.equal([{ name: `ferry.j.${t3.id}`, recording: true }]);
    expect(overlayFiles(qsd)).to.deep.equal([]);
  });
});
