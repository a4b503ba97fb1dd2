import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { pushAllocation, type Allocation, type DiskImage } from '../restore-access/disk-image.js';
import { Prng } from '../testing/vm-image.js';
import { OverlayImage } from './overlay-image.js';

/** A point in memory: the first quarter zeros (a hole), the rest patterned. */
function memoryImage(size: number): DiskImage & { bytes: Buffer; reads: number } {
  const bytes = Buffer.alloc(size);
  for (let i = size >> 2; i < size; i++) bytes[i] = (i * 31) & 0xff;
  const img = {
    bytes,
    reads: 0,
    size,
    blockSize: 65536,
    read: async (offset: number, length: number) => {
      img.reads++;
      return Buffer.from(bytes.subarray(offset, offset + length));
    },
    allocation: (offset: number, length: number): Allocation[] => {
      const out: Allocation[] = [];
      const hole = size >> 2;
      if (offset < hole) pushAllocation(out, offset, Math.min(length, hole - offset), true);
      if (offset + length > hole) pushAllocation(out, Math.max(offset, hole), offset + length - Math.max(offset, hole), false);
      return out;
    },
    close: async () => undefined,
  };
  return img;
}

describe('OverlayImage: copy-on-write view of a point', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-overlay-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const id = { vm: 'v', disk: 'd', point: 'p1' };

  it('reads what was written (unaligned writes, zeroes, trims, the short last chunk), never writes the point, and keeps it across a reopen', async () => {
    const size = 1024 * 1024 + 1234;
    const base = memoryImage(size);
    const original = Buffer.from(base.bytes);
    const model = Buffer.from(base.bytes);
    const ov = await OverlayImage.open(path.join(dir, 'ov'), base, id);
    const rng = new Prng(3);
    for (let n = 0; n < 200; n++) {
      const off = rng.int(size);
      const len = Math.min(size - off, 1 + rng.int(20_000));
      const kind = rng.int(3);
      if (kind === 0) {
        const data = rng.fill(Buffer.alloc(len));
        await ov.write(off, data);
        data.copy(model, off);
      } else {
        await (kind === 1 ? ov.writeZeroes(off, len) : ov.trim(off, len));
        model.fill(0, off, off + len);
      }
    }
    await ov.write(size - 10, Buffer.alloc(10, 7));
    model.fill(7, size - 10);
    expect((await ov.read(0, size)).equals(model)).to.equal(true);
    const alloc = ov.allocation(0, size);
    expect(alloc.reduce((s, a) => s + a.length, 0)).to.equal(size);
    for (const a of alloc.filter((x) => x.zero)) expect(model.subarray(a.offset, a.offset + a.length).every((b) => b === 0)).to.equal(true);
    await ov.close();
    expect(base.bytes.equals(original)).to.equal(true);
    const again = await OverlayImage.open(path.join(dir, 'ov'), memoryImage(size), id);
    expect((await again.read(0, size)).equals(model)).to.equal(true);
    await again.close();
  });

  it('reads go straight to the point until something is written', async () => {
    const base = memoryImage(64 * 1024);
    const ov = await OverlayImage.open(path.join(dir, 'ov'), base, id);
    expect(ov.allocation(0, base.size)).to.deep.equal(base.allocation(0, base.size));
    await ov.read(0, 4096);
    expect(base.reads).to.equal(1);
    await ov.close();
  });

  it('refuses an overlay of another point, a foreign folder, and reads beyond the disk', async () => {
    const base = memoryImage(8192);
    await (await OverlayImage.open(path.join(dir, 'ov'), base, id)).close();
    for (const [folder, who] of [
      [path.join(dir, 'ov'), { ...id, point: 'p2' }],
      [dir, id],
    ] as const) {
      await OverlayImage.open(folder, memoryImage(8192), who).then(
        () => expect.fail('opened'),
        (err) => expect(err.code).to.equal('SERVE_OVERLAY'),
      );
    }
    const ov = await OverlayImage.open(path.join(dir, 'ov'), memoryImage(8192), id);
    await ov.read(8000, 500).then(
      () => expect.fail('read past the end'),
      (err) => expect(err.code).to.equal('READ_OUT_OF_RANGE'),
    );
    await ov.close();
  });

  it('after a flush the chunk states on disk point only at data that is on disk', async () => {
    const base = memoryImage(3 * 4096);
    const ov = await OverlayImage.open(path.join(dir, 'ov'), base, id);
    await ov.write(4096, Buffer.alloc(4096, 9));
    await ov.flush();
    expect([...readFileSync(path.join(dir, 'ov', 'chunks'))]).to.deep.equal([0, 1, 0]);
    expect(readFileSync(path.join(dir, 'ov', 'data')).subarray(4096, 8192).every((b) => b === 9)).to.equal(true);
    await ov.close();
    writeFileSync(path.join(dir, 'ov', 'overlay.json'), '{');
    await OverlayImage.open(path.join(dir, 'ov'), base, id).then(
      () => expect.fail('opened a damaged overlay.json'),
      (err) => expect(err.code).to.equal('SERVE_OVERLAY'),
    );
  });
});
