import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { NbdTransport } from './nbd-transport.js';
import { startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

describe('NBD restore target', function () {
  let t: { dir: string; remove(): void };
  let server: RunningServer | undefined;
  before(function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils' });
  });
  beforeEach(() => {
    t = tempDir();
  });
  afterEach(async () => {
    await server?.stop();
    server = undefined;
    t.remove();
  });

  it('writes, writes zeroes and flushes to a writable export; every address form is understood', async function () {
    const file = path.join(t.dir, 'target.raw');
    writeFileSync(file, Buffer.alloc(2 * 1024 * 1024, 0xaa));
    const sock = path.join(t.dir, 'nbd.sock');
    server = await startQemuNbd(sock, file);
    for (const address of [`unix:${sock}`, `nbd+unix:///?socket=${sock}`]) {
      const target = await new NbdTransport().openTarget(address);
      expect(target, address).to.not.equal(undefined);
      expect(target!.size).to.equal(2 * 1024 * 1024);
      await target!.write(4096, Buffer.alloc(4096, 0x42));
      await target!.writeZeroes!(1024 * 1024, 65536);
      await target!.flush();
      await target!.close();
    }
    await server.stop();
    server = undefined;
    const data = readFileSync(file);
    expect(data.subarray(4096, 8192).every((b) => b === 0x42)).to.equal(true);
    expect(data.subarray(1024 * 1024, 1024 * 1024 + 65536).every((b) => b === 0)).to.equal(true);
    expect(data[0]).to.equal(0xaa);
  });

  it('is not offered for addresses that are not NBD, and refuses a read-only export', async function () {
    expect(await new NbdTransport().openTarget('/tmp/some/file.raw')).to.equal(undefined);
    const file = path.join(t.dir, 'ro.raw');
    writeFileSync(file, Buffer.alloc(1024 * 1024));
    const sock = path.join(t.dir, 'ro.sock');
    server = await startQemuNbd(sock, file, { readOnly: true });
    const err = await new NbdTransport().openTarget(`unix:${sock}`).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('RESTORE_TARGET');
    expect((err as FerryError).message).to.include('read-only');
  });
});
