import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, type DiskHandle } from '@ferry/core/plugin';
import { makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { NbdTransport } from './nbd-transport.js';
import { errorChunk, offsetData, startFakeServer, type FakeScript, type FakeServer } from './test-support/fake-nbd-server.js';
import { startNbdkit, startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

const MiB = 1024 * 1024;

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('expected the promise to reject');
}

describe('NbdTransport', function () {
  this.timeout(20_000);
  let tmp: { dir: string; remove(): void };
  let server: RunningServer | undefined;
  let fake: FakeServer | undefined;
  let handle: DiskHandle | undefined;

  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    await handle?.close();
    handle = undefined;
    await server?.stop();
    server = undefined;
    await fake?.close();
    fake = undefined;
    tmp.remove();
  });

  it('probe says no, with the reason, for a disk without an NBD export', async () => {
    const p = await new NbdTransport().probe({ name: 'vda', path: '/srv/vda.raw' });
    expect(p).to.deep.equal({ ok: false, reason: 'the disk has no NBD export (disk.nbd) on its source host' });
    const err = await rejection(new NbdTransport().open({ name: 'vda' }));
    expect(err.code).to.equal('TRANSPORT_UNAVAILABLE');
    expect(err.where.disk).to.equal('vda');
  });

  it('probe says no, naming address and export, when nothing listens', async () => {
    const address = `unix:${path.join(tmp.dir, 'gone.sock')}`;
    const p = await new NbdTransport().probe({ name: 'vda', nbd: { address, exportName: 'vda' } });
    expect(p.ok).to.equal(false);
    expect(p.reason).to.contain(address).and.contain("export 'vda'").and.contain('ENOENT');
    const err = await rejection(new NbdTransport().open({ name: 'vda', nbd: { address, exportName: 'vda' } }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.where).to.include({ disk: 'vda', host: address });
  });

  it('probe says yes with size and address; the handle reads and reports holes', async function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils' });
    const file = path.join(tmp.dir, 'vda.raw');
    await makeVmImage(file, { sizeBytes: 4 * MiB, seed: 3, holes: 0.5 });
    const socket = path.join(tmp.dir, 'nbd.sock');
    server = await startQemuNbd(socket, file, { readOnly: true, extra: ['-x', 'vda'] });
    const disk = { name: 'vda', nbd: { address: `unix:${socket}`, exportName: 'vda' } };
    const t = new NbdTransport({ maxInFlight: 4 });
    const p = await t.probe(disk);
    expect(p.ok).to.equal(true);
    expect(p.reason).to.equal(`NBD export 'vda' at unix:${socket} answers (${4 * MiB} bytes)`);
    handle = await t.open(disk);
    const content = readFileSync(file);
    const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => handle!.read(i * 128 * 1024, 128 * 1024)));
    expect(Buffer.concat(reads.map((r) => Buffer.from(r))).equals(content)).to.equal(true);
    expect((await handle.blockStatus!(0, 4 * MiB)).some((e) => e.kind === 'zero')).to.equal(true);
  });

  it('offers no blockStatus when the server has no base:allocation (the contract default: all data)', async function () {
    skipUnlessTools(this, { nbdkit: 'nbdkit' });
    const socket = path.join(tmp.dir, 'nbd.sock');
    server = await startNbdkit(socket, ['memory', '1M'], ['--no-sr']);
    handle = await new NbdTransport().open({ name: 'vdb', nbd: { address: `unix:${socket}`, exportName: '' } });
    expect(handle.blockStatus).to.equal(undefined);
    expect(handle.size).to.equal(MiB);
  });

  it('spreads reads over several connections when asked and the server allows it', async () => {
    const onRequest: FakeScript['onRequest'] = (req, s) => s.write(offsetData(req.cookie, req.offset, Buffer.alloc(req.length, req.offset >> 16)));
    const script = { size: MiB, onRequest };
    fake = await startFakeServer(path.join(tmp.dir, 'multi.sock'), { ...script, transmissionFlags: 1 | 256 });
    handle = await new NbdTransport({ connections: 3 }).open({ name: 'vdd', nbd: { address: fake.address, exportName: '' } });
    const got = await Promise.all(Array.from({ length: 6 }, (_, i) => handle!.read(i * 65536, 100)));
    got.forEach((g, i) => expect(Buffer.from(g).equals(Buffer.alloc(100, i))).to.equal(true));
    expect(fake.connections()).to.equal(3);
    await handle.close();
    handle = undefined;
    await fake.close();
    // Without NBD_FLAG_CAN_MULTI_CONN on a writable export, one connection only.
    fake = await startFakeServer(path.join(tmp.dir, 'single.sock'), script);
    handle = await new NbdTransport({ connections: 3 }).open({ name: 'vdd', nbd: { address: fake.address, exportName: '' } });
    await handle.read(0, 10);
    expect(fake.connections()).to.equal(1);
  });

  it('stamps the disk on read errors and keeps reading after them', async () => {
    fake = await startFakeServer(path.join(tmp.dir, 'fake.sock'), {
      size: MiB,
      contexts: ['base:allocation'],
      onRequest: (req, s) => s.write(req.offset === 0 ? errorChunk(req.cookie, 5, 'dead sector') : offsetData(req.cookie, req.offset, Buffer.alloc(req.length, 1))),
    });
    handle = await new NbdTransport().open({ name: 'vdc', nbd: { address: fake.address, exportName: '' } });
    const err = await rejection(handle.read(0, 4096));
    expect(err.code).to.equal('TRANSPORT_READ_FAILED');
    expect(err.where).to.include({ disk: 'vdc', offset: 0 });
    expect(err.message).to.contain('dead sector');
    expect(Buffer.from(await handle.read(4096, 16)).equals(Buffer.alloc(16, 1))).to.equal(true);
  });
});
