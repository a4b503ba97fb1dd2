import path from 'node:path';
import { expect } from 'chai';
import { FerryError, type DiskHandle } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { NbdTransport } from './nbd-transport.js';
import { run, startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

/**
 * A qcow2 image with data written before a persistent bitmap `b0` was added, then three writes
 * the bitmap records (qemu-io writes through enabled persistent bitmaps and stores them on exit).
 */
function imageWithBitmap(dir: string): string {
  const file = path.join(dir, 'disk.qcow2');
  run('qemu-img', ['create', '-f', 'qcow2', file, '16M']);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 0 4M', file]);
  run('qemu-img', ['bitmap', '--add', '--enable', '-f', 'qcow2', file, 'b0']);
  run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x55 1M 64k', '-c', 'write -P 0x66 5M 4k', '-c', 'write -P 0x77 8M 128k', file]);
  return file;
}

describe('NBD changedBlocks (qemu:dirty-bitmap) against qemu-nbd', function () {
  this.timeout(20_000);
  let tmp: { dir: string; remove(): void };
  let server: RunningServer | undefined;
  let handle: DiskHandle | undefined;
  let socket: string;

  beforeEach(async function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils', 'qemu-img': 'qemu-utils', 'qemu-io': 'qemu-utils' });
    tmp = tempDir();
    socket = path.join(tmp.dir, 'nbd.sock');
    server = await startQemuNbd(socket, imageWithBitmap(tmp.dir), { format: 'qcow2', readOnly: true, bitmap: 'b0' });
  });
  afterEach(async () => {
    await handle?.close();
    handle = undefined;
    await server?.stop();
    server = undefined;
    tmp?.remove();
  });

  const disk = (bitmap?: string) => ({ name: 'vda', nbd: { address: `unix:${socket}`, exportName: '', bitmap } });

  it('returns exactly the written ranges, at the bitmap granularity (64 KiB)', async () => {
    handle = await new NbdTransport().open(disk('b0'));
    expect(await handle.changedBlocks!(0, handle.size)).to.deep.equal([
      { offset: MiB, length: 64 * KiB },
      { offset: 5 * MiB, length: 64 * KiB },
      { offset: 8 * MiB, length: 128 * KiB },
    ]);
    // base:allocation is still there: the data written before the bitmap is allocated, not changed.
    expect((await handle.blockStatus!(0, MiB))[0]).to.deep.equal({ offset: 0, length: MiB, kind: 'data' });
  });

  it('clips to the asked range and keeps the whole range covered', async () => {
    handle = await new NbdTransport().open(disk('b0'));
    expect(await handle.changedBlocks!(MiB + 4096, 8 * MiB)).to.deep.equal([
      { offset: MiB + 4096, length: 60 * KiB },
      { offset: 5 * MiB, length: 64 * KiB },
      { offset: 8 * MiB, length: 128 * KiB },
    ]);
    expect(await handle.changedBlocks!(0, 8 * MiB + 4096)).to.deep.equal([
      { offset: MiB, length: 64 * KiB },
      { offset: 5 * MiB, length: 64 * KiB },
      { offset: 8 * MiB, length: 4096 },
    ]);
    expect(await handle.changedBlocks!(2 * MiB, MiB)).to.deep.equal([]);
    expect(await handle.changedBlocks!(8 * MiB + 64 * KiB, 10 * MiB)).to.deep.equal([{ offset: 8 * MiB + 64 * KiB, length: 64 * KiB }]);
  });

  it('refuses to open with a bitmap the server does not export, naming it', async () => {
    let err: unknown;
    try {
      handle = await new NbdTransport().open(disk('b1'));
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('TRANSPORT_READ_FAILED');
    expect((err as FerryError).message).to.contain('dirty bitmap b1').and.contain('qemu:dirty-bitmap:b1').and.contain('disk vda');
    const probe = await new NbdTransport().probe(disk('b1'));
    expect(probe.ok).to.equal(false);
    expect(probe.reason).to.contain('b1');
  });

  it('offers no changedBlocks when no bitmap is named', async () => {
    handle = await new NbdTransport().open(disk());
    expect(handle.changedBlocks).to.equal(undefined);
    expect(handle.blockStatus).to.be.a('function');
  });
});
