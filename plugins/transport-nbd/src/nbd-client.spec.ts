import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { Prng, skipUnlessTools } from '@ferry/core/testing';
import { NbdClient } from './nbd-client.js';
import { NbdServerError } from './nbd-errors.js';
import { run, startNbdkit, startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    if (process.env.SHOW_ERRORS) console.log('        ' + (err as Error).message);
    return err as FerryError;
  }
  throw new Error('expected the promise to reject');
}

describe('NbdClient against real servers', function () {
  this.timeout(20_000);
  let tmp: { dir: string; remove(): void };
  let server: RunningServer | undefined;
  let client: NbdClient | undefined;
  const sock = (): string => path.join(tmp.dir, 'nbd.sock');

  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    await client?.close().catch(() => undefined);
    client = undefined;
    await server?.stop();
    server = undefined;
    tmp.remove();
  });

  describe('nbdkit', () => {
    beforeEach(function () {
      skipUnlessTools(this, { nbdkit: 'nbdkit' });
    });

    it('reads a sparse-random disk as nbdcopy (the reference client) does, with many reads in flight', async function () {
      skipUnlessTools(this, { nbdcopy: 'libnbd-bin' });
      server = await startNbdkit(sock(), ['sparse-random', '32M', 'seed=4711', 'percent=30']);
      const ref = path.join(tmp.dir, 'ref.raw');
      run('nbdcopy', [`nbd+unix:///?socket=${sock()}`, ref]);
      const expected = readFileSync(ref);
      client = await NbdClient.connect({ address: server.address, metaContexts: ['base:allocation'], maxInFlight: 8 });
      expect(client.size).to.equal(32 * MiB);
      const pieces = await Promise.all(Array.from({ length: 64 }, (_, i) => client!.read(i * 512 * KiB, 512 * KiB)));
      expect(Buffer.concat(pieces).equals(expected)).to.equal(true);
      let zeros = 0;
      for (let pos = 0, rounds = 0; pos < client.size && rounds < 10_000; rounds++) {
        for (const e of (await client.blockStatus(pos, client.size - pos)).get('base:allocation')!) {
          expect(e.offset).to.equal(pos);
          if (e.flags & 2) {
            expect(expected.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).to.equal(true);
            zeros += e.length;
          }
          pos += e.length;
        }
      }
      expect(zeros).to.be.greaterThan(0);
    });

    it('handles 64-bit offsets on a 1 TiB export', async () => {
      server = await startNbdkit(sock(), ['memory', '1T']);
      client = await NbdClient.connect({ address: server.address });
      expect(client.size).to.equal(2 ** 40);
      const data = new Prng(3).fill(Buffer.alloc(64 * KiB));
      const at = 2 ** 40 - 64 * KiB;
      await client.write(at, data);
      expect((await client.read(at, data.length)).equals(data)).to.equal(true);
      expect((await client.read(2 ** 33 + 7, 100)).every((b) => b === 0)).to.equal(true);
    });

    it('splits reads and writes at the maximum block size the server advertises', async () => {
      server = await startNbdkit(sock(), ['--filter=blocksize-policy', 'memory', '4M', 'blocksize-maximum=64K', 'blocksize-error-policy=error']);
      client = await NbdClient.connect({ address: server.address });
      expect(client.blockSize.maximum).to.equal(64 * KiB);
      const data = new Prng(5).fill(Buffer.alloc(MiB + 4096));
      await client.write(512 * KiB, data);
      expect((await client.read(512 * KiB, data.length)).equals(data)).to.equal(true);
    });

    it('widens unaligned reads to the minimum block size the server advertises', async () => {
      server = await startNbdkit(sock(), ['--filter=blocksize-policy', 'memory', '1M', 'blocksize-minimum=4K', 'blocksize-error-policy=error']);
      client = await NbdClient.connect({ address: server.address });
      expect(client.blockSize.minimum).to.equal(4096);
      const data = new Prng(6).fill(Buffer.alloc(16 * KiB));
      await client.write(8 * KiB, data);
      expect((await client.read(8 * KiB + 4097, 10)).equals(data.subarray(4097, 4107))).to.equal(true);
      expect((await rejection(client.write(8 * KiB + 1, Buffer.alloc(10)))).message).to.contain('not aligned');
    });

    it('turns an injected read error into a coded error naming the offset, then reads again', async () => {
      const flag = path.join(tmp.dir, 'inject');
      writeFileSync(flag, '');
      server = await startNbdkit(sock(), ['--filter=error', 'pattern', '8M', 'error-pread=EIO', 'error-pread-rate=100%', `error-pread-file=${flag}`]);
      client = await NbdClient.connect({ address: server.address });
      const err = await rejection(client.read(3 * MiB, 64 * KiB));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where.offset).to.equal(3 * MiB);
      expect(err.message).to.contain('EIO (5)').and.contain('NBD_CMD_READ');
      expect((err.cause as NbdServerError).errno).to.equal(5);
      rmSync(flag);
      // nbdkit's pattern plugin: each 8-byte word holds its own offset, big-endian.
      const ok = await client.read(3 * MiB, 16);
      expect(ok.readBigUInt64BE(0)).to.equal(BigInt(3 * MiB));
    });

    it('works without structured replies (simple replies only)', async () => {
      server = await startNbdkit(sock(), ['pattern', '1M'], ['--no-sr']);
      client = await NbdClient.connect({ address: server.address, metaContexts: ['base:allocation'] });
      expect(client.structuredReplies).to.equal(false);
      const got = await Promise.all([client.read(0, 64 * KiB), client.read(512 * KiB, 8)]);
      expect(got[1].readBigUInt64BE(0)).to.equal(BigInt(512 * KiB));
    });

    it('falls back to plain writes of zeros when the server has no WRITE_ZEROES', async () => {
      server = await startNbdkit(sock(), ['--filter=nozero', 'memory', '4M']);
      client = await NbdClient.connect({ address: server.address });
      expect(client.canWriteZeroes).to.equal(false);
      await client.write(0, Buffer.alloc(3 * MiB, 0xaa));
      await client.writeZeroes(512 * KiB, 2 * MiB);
      const back = await client.read(0, 3 * MiB);
      expect(back.subarray(0, 512 * KiB).every((b) => b === 0xaa)).to.equal(true);
      expect(back.subarray(512 * KiB, 2560 * KiB).every((b) => b === 0)).to.equal(true);
      expect(back.subarray(2560 * KiB).every((b) => b === 0xaa)).to.equal(true);
    });
  });

  describe('qemu-nbd', () => {
    beforeEach(function () {
      skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils', 'qemu-img': 'qemu-utils' });
    });

    it('writes, zeroes and flushes a writable raw file, verified by reading the file', async () => {
      const file = path.join(tmp.dir, 'w.raw');
      run('qemu-img', ['create', '-f', 'raw', file, '8M']);
      server = await startQemuNbd(sock(), file);
      client = await NbdClient.connect({ address: server.address, maxRequestBytes: 256 * KiB });
      expect(client.readOnly).to.equal(false);
      expect(client.canWriteZeroes && client.canFlush).to.equal(true);
      const data = new Prng(11).fill(Buffer.alloc(2 * MiB + 512));
      await client.write(MiB - 512, data);
      await client.writeZeroes(2 * MiB, 64 * KiB);
      await client.flush();
      await client.close();
      const disk = readFileSync(file);
      const want = Buffer.from(data);
      want.fill(0, MiB + 512, MiB + 512 + 64 * KiB);
      expect(disk.subarray(MiB - 512, MiB - 512 + want.length).equals(want)).to.equal(true);
      expect(disk.subarray(0, MiB - 512).every((b) => b === 0)).to.equal(true);
    });

    it('refuses writes to a read-only export before sending them', async () => {
      const file = path.join(tmp.dir, 'r.raw');
      run('qemu-img', ['create', '-f', 'raw', file, '1M']);
      server = await startQemuNbd(sock(), file, { readOnly: true });
      client = await NbdClient.connect({ address: server.address });
      expect(client.readOnly).to.equal(true);
      expect((await rejection(client.write(0, Buffer.alloc(512)))).message).to.contain('read-only');
    });

    it('names the export when the server does not have it', async () => {
      const file = path.join(tmp.dir, 'x.raw');
      run('qemu-img', ['create', '-f', 'raw', file, '1M']);
      server = await startQemuNbd(sock(), file, { extra: ['-x', 'disk0'] });
      const err = await rejection(NbdClient.connect({ address: server.address, exportName: 'disk9' }));
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.contain("export 'disk9'").and.contain(server.address).and.contain('NBD_REP_ERR_UNKNOWN');
      client = await NbdClient.connect({ address: `nbd+unix:///disk0?socket=${sock()}` });
      expect(client.exportName).to.equal('disk0');
      expect(client.size).to.equal(MiB);
    });

    it('refuses requests after close, and close twice is harmless', async () => {
      const file = path.join(tmp.dir, 'c.raw');
      run('qemu-img', ['create', '-f', 'raw', file, '1M']);
      server = await startQemuNbd(sock(), file, { readOnly: true });
      const c = await NbdClient.connect({ address: server.address });
      const inFlight = c.read(0, 64 * KiB);
      await c.close();
      await c.close();
      expect((await inFlight).length).to.equal(64 * KiB); // close waits for requests in flight
      expect((await rejection(c.read(0, 1))).message).to.contain('closed');
    });
  });

  it('names the address when nothing listens there', async () => {
    const address = `unix:${path.join(tmp.dir, 'nobody.sock')}`;
    const err = await rejection(NbdClient.connect({ address, exportName: 'vm' }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain(address).and.contain('ENOENT');
    expect(existsSync(path.join(tmp.dir, 'nobody.sock'))).to.equal(false);
  });
});
