import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { BlockState, type BlockNode } from './block-state.js';
import { overlayNames } from './ferry-names.js';
import { imageBitmapNames } from './image-bitmaps.js';
import { chooseKind } from './snapshot-kind.js';
import { KiB, changed, openHost, qemuObjects, take } from './testing/session-helpers.js';
import { StorageDaemon, TOOLS } from './testing/storage-daemon.js';

const run = promisify(execFile);
const DISK = { name: 'disk0', node: 'disk0', size: 4 << 20, drv: 'qcow2' };
const WHERE = { vm: 'vm1' };

function node(name: string, over: Partial<BlockNode> = {}): BlockNode {
  return { nodeName: name, drv: 'qcow2', ro: false, virtualSize: 4 << 20, filename: `/images/${name}.qcow2`, bitmaps: [], ...over };
}

/** A block layer with the disk and, optionally, a Ferry overlay of another job backing onto it. */
function stateWith(disk: Partial<BlockNode>, overlay?: string): BlockState {
  const nodes = new Map([['disk0', node('disk0', disk)]]);
  const parents = new Map<string, { parent: string; edge: string }[]>([['disk0', []]]);
  if (overlay) {
    nodes.set(overlay, node(overlay));
    parents.get('disk0')!.push({ parent: overlay, edge: 'backing' });
  }
  return new BlockState(nodes, [], parents, [], []);
}

describe('choice of snapshot kind', function () {
  const self = process.argv[1]; // a file this process can read, standing in for a datastore image

  it('fleecing unless the job asks for auto', async function () {
    expect(await chooseKind('fleecing', stateWith({ filename: self }), DISK, WHERE)).to.deep.equal({ kind: 'fleecing' });
    expect(await chooseKind('auto', stateWith({ filename: self }), DISK, WHERE)).to.deep.equal({ kind: 'external' });
  });

  const fallbacks: [string, Partial<BlockNode>, RegExp][] = [
    ['the image cannot be opened here', { filename: '/nonexistent/ferry/disk0.qcow2' }, /cannot be opened from this proxy: ENOENT/],
    ['QEMU names no absolute path', { filename: 'json:{"driver":"nbd"}' }, /not an absolute path/],
    ['the disk is not qcow2', { drv: 'raw' }, /is raw, and external snapshots are taken of qcow2 disks only/],
    ['the disk node is read-only', { ro: true }, /is read-only/],
  ];
  for (const [what, over, reason] of fallbacks) {
    it(`auto falls back to fleecing when ${what}, saying why`, async function () {
      const c = await chooseKind('auto', stateWith({ filename: self, ...over }), DISK, WHERE);
      expect(c.kind).to.equal('fleecing');
      expect(c.whyNotExternal).to.match(/^hot-add not offered for disk0: /).and.match(reason);
    });
  }

  it("another job's fleecing: this job fleeces too, since a commit would write below that job's filter", async function () {
    const other = overlayNames('fleecing', 'k', 'S1', 0, '/tmp').node;
    const c = await chooseKind('auto', stateWith({ filename: self }, other), DISK, WHERE);
    expect(c).to.deep.equal({ kind: 'fleecing', whyNotExternal: `hot-add not offered for disk0: another job's fleecing snapshot (${other}) is open on it` });
  });

  it("another job's external snapshot: refused in either mode, naming it", async function () {
    const other = overlayNames('external', 'k', 'S1', 0, '/tmp').node;
    for (const mode of ['auto', 'fleecing'] as const) {
      const err = (await chooseKind(mode, stateWith({ filename: self }, other), DISK, WHERE).catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.code).to.equal('PLUGIN_FAILED');
      expect(err.where).to.include({ vm: 'vm1', disk: 'disk0' });
      expect(err.message).to.include(other).and.include('read-only until');
    }
  });
});

describe('bitmap names in a qcow2 image (the proof that a path is the image QEMU holds)', function () {
  let dir: string;
  before(function () {
    skipUnlessTools(this, TOOLS); // npm test installs the Debian packages when it can
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-bitmaps-'));
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  it('lists the names qemu-img stored', async function () {
    const img = path.join(dir, 'a.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', img, '1M']);
    expect(await imageBitmapNames(img)).to.deep.equal({ reason: `${img} has no consistent bitmaps extension` });
    for (const b of ['ferry.j.20250101T000000Z-abcdef', 'x']) await run('qemu-img', ['bitmap', '--add', img, b]);
    expect(await imageBitmapNames(img)).to.deep.equal({ names: ['ferry.j.20250101T000000Z-abcdef', 'x'] });
  });

  it('says why for a raw file and a version 2 image', async function () {
    const raw = path.join(dir, 'r.raw');
    writeFileSync(raw, Buffer.alloc(64 * KiB));
    expect(await imageBitmapNames(raw)).to.deep.equal({ reason: `${raw} is not a qcow2 image` });
    const v2 = path.join(dir, 'v2.qcow2');
    await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=0.10', v2, '1M']);
    expect(await imageBitmapNames(v2)).to.deep.equal({ reason: `${v2} is a version 2 qcow2 image, which holds no bitmaps` });
  });
});

describe('two jobs on one VM with external snapshots', function () {
  this.timeout(30_000);
  let qsd: StorageDaemon | undefined;
  const AUTO = { snapshot: 'auto' };

  before(function () {
    skipUnlessTools(this, TOOLS); // npm test installs the Debian packages when it can
  });
  beforeEach(async () => {
    qsd = await StorageDaemon.start({ writableExports: true });
  });
  afterEach(async () => {
    await qsd?.stop();
    qsd = undefined;
  });

  it("while one job's external snapshot is open the other's is refused; it stays incremental and sees those writes", async function () {
    const hj = await openHost(qsd!, 'j', undefined, AUTO);
    const hk = await openHost(qsd!, 'k', undefined, AUTO);
    const k1 = await take(hk, qsd!, 'k', undefined, AUTO);
    await k1.snap.release('success');
    const j1 = await take(hj, qsd!, 'j', undefined, AUTO);
    await qsd!.write('disk0', 512 * KiB, 64 * KiB, 0x66); // into j's overlay
    const err = (await take(hk, qsd!, 'k', k1, AUTO).catch((e: unknown) => e)) as FerryError;
    expect(err).to.be.instanceOf(FerryError);
    expect(err.message).to.include(overlayNames('external', 'j', j1.id, 0, qsd!.dir).node);
    expect((await qemuObjects(qsd!)).bitmaps.find((b) => b.name === `ferry.k.${k1.id}`)).to.deep.equal({ name: `ferry.k.${k1.id}`, recording: true });
    await j1.snap.release('success');
    const k2 = await take(hk, qsd!, 'k', k1, AUTO);
    expect(k2.disk.path).to.equal(qsd!.image('disk0'));
    expect(k2.disk.changes).to.deep.equal({ since: k1.id, extents: [{ offset: 512 * KiB, length: 64 * KiB }] });
    await k2.snap.release('success');
  });

  it("an external snapshot waits for no one: beside another job's open fleecing this job fleeces, and both stay incremental", async function () {
    const hj = await openHost(qsd!, 'j', undefined, AUTO);
    const hk = await openHost(qsd!, 'k');
    const k1 = await take(hk, qsd!, 'k');
    const j1 = await take(hj, qsd!, 'j', undefined, AUTO);
    expect(j1.disk.path).to.equal(undefined);
    expect(j1.disk.nbd?.exportName).to.equal(`ferry-${j1.id}-0`);
    expect(j1.disk.fullReason).to.match(/hot-add not offered for disk0: another job's fleecing snapshot \(ferry-fleece-\S+\) is open on it/);
    await qsd!.write('disk0', 0, 64 * KiB, 0x77);
    await j1.snap.release('success');
    await k1.snap.release('success');
    const j2 = await take(hj, qsd!, 'j', j1, AUTO);
    expect(j2.disk.path).to.equal(qsd!.image('disk0'));
    expect(j2.disk.changes).to.deep.equal({ since: j1.id, extents: [{ offset: 0, length: 64 * KiB }] });
    await j2.snap.release('success');
    const k2 = await take(hk, qsd!, 'k', k1);
    expect(await changed(k2.disk)).to.deep.equal([{ offset: 0, length: 64 * KiB }]);
    await k2.snap.release('success');
  });
});
