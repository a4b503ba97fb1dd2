import { mkdtemp, open, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { runTool } from '../testing/disk-images.js';
import { skipUnlessTools } from '../testing/test-skips.js';
import { openFileReader } from './disk-reader.js';
import { probeSwap, type SwapProbe } from './swap.js';

const MiB = 1024 * 1024;

async function probe(file: string): Promise<SwapProbe> {
  const f = await openFileReader(file);
  try {
    return await probeSwap(f.read, f.size);
  } finally {
    await f.close();
  }
}

async function patch(file: string, offset: number, bytes: Uint8Array): Promise<void> {
  const h = await open(file, 'r+');
  try {
    await h.write(bytes, 0, bytes.length, offset);
  } finally {
    await h.close();
  }
}

describe('Linux swap headers against mkswap and blkid', function () {
  let dir: string;
  before(async function () {
    skipUnlessTools(this, { mkswap: 'util-linux', blkid: 'util-linux' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-swap-'));
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function mkswap(name: string, size: number, args: string[]): Promise<string> {
    const file = path.join(dir, name);
    await writeFile(file, '');
    await truncate(file, size);
    runTool('mkswap', [...args, file]);
    return file;
  }

  it('reads version, size, uuid and label as blkid sees them', async function () {
    const file = await mkswap('a.swap', 4 * MiB + 1000, ['-L', 'ferry-swap', '-U', '0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9']);
    const found = await probe(file);
    const blkid = runTool('blkid', ['-p', '-o', 'export', file]);
    expect(blkid).to.match(/TYPE=swap/);
    expect(found).to.include({ kind: 'swap', version: 1, pageSize: 4096, lastPage: 1023, size: 4 * MiB, headerSize: 4096, littleEndian: true });
    expect(found).to.include({ uuid: /UUID=(\S+)/.exec(blkid)![1], label: /LABEL=(\S+)/.exec(blkid)![1] });
  });

  it('finds the header of another page size', async function () {
    const file = await mkswap('b.swap', 4 * MiB, ['-p', '16384']);
    expect(await probe(file)).to.include({ kind: 'swap', pageSize: 16384, lastPage: 255, size: 4 * MiB });
  });

  it('reads a big-endian header', async function () {
    const file = await mkswap('be.swap', 4 * MiB, ['-L', 'be']);
    const fields = Buffer.alloc(12);
    fields.writeUInt32BE(1, 0);
    fields.writeUInt32BE(511, 4);
    await patch(file, 1024, fields);
    expect(await probe(file)).to.include({ kind: 'swap', littleEndian: false, lastPage: 511, size: 2 * MiB, label: 'be' });
  });

  it('reports a hibernation image as hibernated, not as swap to drop', async function () {
    const file = await mkswap('hib.swap', 4 * MiB, []);
    await patch(file, 4096 - 10, Buffer.from('S1SUSPEND\0', 'latin1'));
    expect(await probe(file)).to.deep.equal({ kind: 'hibernated', pageSize: 4096, signature: 'S1SUSPEND' });
  });

  it('says none for data without a magic, and DISK_FORMAT_INVALID for a magic with a bad header', async function () {
    const file = path.join(dir, 'plain.img');
    await writeFile(file, Buffer.alloc(MiB, 0x5a));
    expect(await probe(file)).to.deep.equal({ kind: 'none' });
    expect(await probeSwap(async () => new Uint8Array(0), 100)).to.deep.equal({ kind: 'none' });
    const bad = await mkswap('bad.swap', 4 * MiB, []);
    await patch(bad, 1024, Buffer.from([7, 0, 0, 0]));
    try {
      await probe(bad);
      expect.fail('expected DISK_FORMAT_INVALID');
    } catch (err) {
      expect(err).to.be.instanceOf(FerryError);
      expect((err as FerryError).code).to.equal('DISK_FORMAT_INVALID');
    }
  });
});
