import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, type AllocationExtent, type DiskHandle, type SourceDisk } from '@ferry/core/plugin';
import { skipBecause } from '@ferry/core/testing';
import { readAtFile, type ReadAt } from './hotadd-disk-handle.js';
import { HotaddTransport } from './hotadd-transport.js';
import { loadSeekAddon, type SeekAddon } from './seek-addon.js';

/** Allocation granularity the layout assertions allow: file systems allocate whole 4 KiB blocks. */
const BLOCK = 4096;
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

type Writes = [offset: number, bytes: Buffer][];

/** A sparse file: `size` bytes of holes with `writes` on top. */
function sparseFile(dir: string, name: string, size: number, writes: Writes): string {
  const file = path.join(dir, name);
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, size);
    for (const [offset, bytes] of writes) fs.writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/** Distinct non-zero bytes, so a misplaced read cannot pass by accident. */
function pattern(length: number, seed: number): Buffer {
  return Buffer.from(Array.from({ length }, (_, i) => ((i * 31 + seed) % 255) + 1));
}

/** The layout the writes should produce: written ranges widened to whole blocks, zeros between. */
function expectedLayout(size: number, writes: Writes): AllocationExtent[] {
  const data: AllocationExtent[] = [];
  for (const [offset, bytes] of [...writes].sort((a, b) => a[0] - b[0])) {
    const start = Math.floor(offset / BLOCK) * BLOCK;
    const end = Math.min(size, Math.ceil((offset + bytes.length) / BLOCK) * BLOCK);
    const last = data.at(-1);
    if (last && last.offset + last.length >= start) last.length = Math.max(last.length, end - last.offset);
    else data.push({ offset: start, length: end - start, kind: 'data' });
  }
  const out: AllocationExtent[] = [];
  let pos = 0;
  for (const d of data) {
    if (d.offset > pos) out.push({ offset: pos, length: d.offset - pos, kind: 'zero' });
    out.push(d);
    pos = d.offset + d.length;
  }
  if (pos < size) out.push({ offset: pos, length: size - pos, kind: 'zero' });
  return out;
}

/** Asks for block status front to back, as the core's reader does, until the whole disk is covered. */
async function wholeLayout(handle: DiskHandle): Promise<AllocationExtent[]> {
  const out: AllocationExtent[] = [];
  for (let pos = 0; pos < handle.size; ) {
    const got = await handle.blockStatus!(pos, handle.size - pos);
    expect(got[0].offset).to.equal(pos);
    for (const e of got) {
      const last = out.at(-1);
      if (last && last.kind === e.kind && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ ...e });
    }
    pos = got.at(-1)!.offset + got.at(-1)!.length;
  }
  return out;
}

/** A `readAt` that records what it was asked to read. */
function countingReadAt(): { readAt: ReadAt; reads: { position: number; length: number }[] } {
  const reads: { position: number; length: number }[] = [];
  const readAt: ReadAt = (fh, into, at, length, position) => {
    reads.push({ position, length });
    return readAtFile(fh, into, at, length, position);
  };
  return { readAt, reads };
}

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('expected a rejection');
}

function fakeSeek(fail: string): SeekAddon {
  return {
    SEEK_DATA: 3,
    SEEK_HOLE: 4,
    seek: () => {
      throw Object.assign(new Error(`lseek: ${fail}`), { code: fail });
    },
  };
}

describe('HotaddTransport', () => {
  let dir: string;
  let handles: DiskHandle[];
  const disk = (file: string | undefined, extra: Partial<SourceDisk> = {}): SourceDisk => ({
    name: 'vm1/disk0',
    path: file,
    ...extra,
  });
  const open = async (t: HotaddTransport, d: SourceDisk): Promise<DiskHandle> => {
    const h = await t.open(d);
    handles.push(h);
    return h;
  };

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-hotadd-'));
    handles = [];
  });
  afterEach(async () => {
    for (const h of handles) await h.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('has the seek addon on this machine (built at npm install)', function () {
    if (process.platform !== 'linux') skipBecause(this, `the seek addon is built on Linux only, not ${process.platform}`);
    expect(loadSeekAddon(), 'build/Release/ferry_seek.node did not load').to.not.equal(undefined);
  });

  it("offers a raw image's descriptor for the block threads, only when reads are plain positional reads", async () => {
    const file = sparseFile(dir, 'a.raw', MiB, [[0, pattern(BLOCK, 1)]]);
    const h = await open(new HotaddTransport(), disk(file));
    expect(h.fd).to.be.a('number');
    const got = Buffer.alloc(BLOCK);
    expect(fs.readSync(h.fd!, got, 0, BLOCK, 0)).to.equal(BLOCK);
    expect(got.equals(pattern(BLOCK, 1))).to.equal(true);
    const counted = await open(new HotaddTransport({ readAt: countingReadAt().readAt }), disk(file));
    expect(counted.fd, 'a readAt of its own sees every read').to.equal(undefined);
  });

  describe('blockStatus', () => {
    const writes: Writes = [
      [0, pattern(BLOCK, 1)],
      [64 * KiB, pattern(2 * BLOCK, 2)],
      [512 * KiB + 100, pattern(100, 3)],
      [MiB - BLOCK, pattern(BLOCK, 4)],
    ];

    it('finds the data and holes of a sparse file', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      const h = await open(new HotaddTransport(), disk(file));
      expect(h.size).to.equal(MiB);
      expect(await wholeLayout(h)).to.deep.equal(expectedLayout(MiB, writes));
    });

    it('answers inside the asked range, starting in a hole and ending in data', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      const h = await open(new HotaddTransport(), disk(file));
      const got = await h.blockStatus!(10 * KiB, 64 * KiB + 10 - 10 * KiB);
      expect(got).to.deep.equal([
        { offset: 10 * KiB, length: 54 * KiB, kind: 'zero' },
        { offset: 64 * KiB, length: 10, kind: 'data' },
      ]);
    });

    it('covers a file whose size is not a multiple of 4096', async () => {
      const size = 3 * BLOCK + 1234;
      const tail: Writes = [[size - 50, pattern(50, 5)]];
      const file = sparseFile(dir, 'odd.raw', size, tail);
      const h = await open(new HotaddTransport(), disk(file));
      expect(h.size).to.equal(size);
      expect(await wholeLayout(h)).to.deep.equal([
        { offset: 0, length: 3 * BLOCK, kind: 'zero' },
        { offset: 3 * BLOCK, length: 1234, kind: 'data' },
      ]);
      expect(Buffer.from(await h.read(size - 50, 50))).to.deep.equal(tail[0][1]);
    });

    it('reports a 1 GiB sparse file as one hole without reading or allocating it', async () => {
      const file = sparseFile(dir, 'big.raw', GiB, []);
      const { readAt, reads } = countingReadAt();
      const h = await open(new HotaddTransport({ readAt }), disk(file));
      const started = Date.now();
      expect(await h.blockStatus!(0, GiB)).to.deep.equal([{ offset: 0, length: GiB, kind: 'zero' }]);
      expect(Date.now() - started).to.be.below(1000);
      expect(reads).to.deep.equal([]);
      expect(fs.statSync(file).blocks).to.equal(0);
    });

    it('lets a reader that follows it read the data and never a hole', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      const { readAt, reads } = countingReadAt();
      const h = await open(new HotaddTransport({ readAt }), disk(file));
      const image = Buffer.alloc(MiB);
      for (const e of await wholeLayout(h)) {
        if (e.kind === 'data') Buffer.from(await h.read(e.offset, e.length)).copy(image, e.offset);
      }
      expect(image.equals(fs.readFileSync(file))).to.equal(true);
      const holes = expectedLayout(MiB, writes).filter((e) => e.kind === 'zero');
      for (const r of reads) {
        for (const hole of holes) {
          const overlaps = r.position < hole.offset + hole.length && hole.offset < r.position + r.length;
          expect(overlaps, `read at ${r.position} (+${r.length}) touches the hole at ${hole.offset}`).to.equal(false);
        }
      }
    });

    it('reports the range as data where lseek cannot tell holes (EINVAL, EOPNOTSUPP)', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      for (const code of ['EINVAL', 'EOPNOTSUPP']) {
        const h = await open(new HotaddTransport({ seek: fakeSeek(code) }), disk(file));
        expect(await h.blockStatus!(BLOCK, 8 * BLOCK)).to.deep.equal([{ offset: BLOCK, length: 8 * BLOCK, kind: 'data' }]);
      }
    });

    it('fails with TRANSPORT_READ_FAILED on other lseek errors', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      const h = await open(new HotaddTransport({ seek: fakeSeek('EIO') }), disk(file));
      const err = await rejection(h.blockStatus!(BLOCK, BLOCK));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.deep.include({ disk: 'vm1/disk0', offset: BLOCK });
    });

    it('is left out, and probe says so, when the seek addon is unavailable', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, writes);
      const t = new HotaddTransport({ seek: null });
      const h = await open(t, disk(file));
      expect(h.blockStatus).to.equal(undefined);
      const probe = await t.probe(disk(file));
      expect(probe.ok).to.equal(true);
      expect(probe.reason).to.contain('hole detection is unavailable');
      expect((await new HotaddTransport().probe(disk(file))).reason).to.not.contain('unavailable');
    });
  });

  describe('read', () => {
    const writes: Writes = [
      [5000, pattern(10_000, 7)],
      [200 * KiB, pattern(3 * BLOCK, 8)],
    ];

    it('returns exactly the bytes, across data and holes, with several reads in flight', async () => {
      const file = sparseFile(dir, 'a.raw', 256 * KiB, writes);
      const whole = fs.readFileSync(file);
      const h = await open(new HotaddTransport(), disk(file));
      const ranges = [
        [0, 64 * KiB],
        [4999, 10_002],
        [190 * KiB, 66 * KiB],
        [256 * KiB - 1, 1],
        [123, 0],
      ];
      const got = await Promise.all(ranges.map(([o, l]) => h.read(o, l)));
      got.forEach((bytes, i) => {
        const [o, l] = ranges[i];
        expect(bytes.length).to.equal(l);
        expect(Buffer.from(bytes).equals(whole.subarray(o, o + l)), `range ${o}+${l}`).to.equal(true);
      });
    });

    it('keeps reading after short reads', async () => {
      const file = sparseFile(dir, 'a.raw', 256 * KiB, writes);
      const short: ReadAt = (fh, into, at, length, position) => readAtFile(fh, into, at, Math.min(length, 1000), position);
      const h = await open(new HotaddTransport({ readAt: short }), disk(file));
      const bytes = await h.read(4000, 20_000);
      expect(Buffer.from(bytes).equals(fs.readFileSync(file).subarray(4000, 24_000))).to.equal(true);
    });

    it('fails with TRANSPORT_READ_FAILED for a range past the end', async () => {
      const file = sparseFile(dir, 'a.raw', 256 * KiB, writes);
      const h = await open(new HotaddTransport(), disk(file));
      const err = await rejection(h.read(256 * KiB - 10, 20));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.deep.include({ disk: 'vm1/disk0', offset: 256 * KiB - 10 });
    });

    it('fails with TRANSPORT_READ_FAILED when the image ends inside the range', async () => {
      const file = sparseFile(dir, 'a.raw', 256 * KiB, writes);
      const h = await open(new HotaddTransport(), disk(file));
      fs.truncateSync(file, 100 * KiB);
      const err = await rejection(h.read(96 * KiB, 8 * KiB));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.deep.include({ disk: 'vm1/disk0', offset: 96 * KiB });
      await h.close();
      await h.close();
    });
  });

  describe('probe and open', () => {
    it('accepts a readable raw image and names its path', async () => {
      const file = sparseFile(dir, 'a.raw', MiB, []);
      expect(await new HotaddTransport().probe(disk(file, { format: 'raw' }))).to.deep.equal({
        ok: true,
        reason: `datastore path ${file} is readable from this proxy`,
      });
    });

    it('refuses a missing image, naming the errno', async () => {
      const missing = path.join(dir, 'missing.raw');
      const probe = await new HotaddTransport().probe(disk(missing));
      expect(probe.ok).to.equal(false);
      expect(probe.reason).to.contain(missing).and.to.contain('ENOENT');
      const err = await rejection(new HotaddTransport().open(disk(missing)));
      expect(err.code).to.equal('TRANSPORT_UNAVAILABLE');
    });

    it('refuses a disk without a datastore path, and a folder', async () => {
      expect((await new HotaddTransport().probe(disk(undefined))).ok).to.equal(false);
      const probe = await new HotaddTransport().probe(disk(dir));
      expect(probe.ok).to.equal(false);
      expect(probe.reason).to.contain('neither an image file nor a block device');
    });

    it('refuses a file with the qcow2 magic but a garbage header, naming the disk and the image', async () => {
      const file = sparseFile(dir, 'q.img', MiB, [[0, Buffer.from('QFI\xfb\x00\x00\x00\x03', 'latin1')]]);
      const probe = await new HotaddTransport().probe(disk(file));
      expect(probe.ok).to.equal(false);
      expect(probe.reason).to.contain('qcow2').and.to.contain(file);
      const err = await rejection(new HotaddTransport().open(disk(file)));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.include({ disk: 'vm1/disk0', file });
    });

    it('refuses a disk declared raw that starts with the qcow2 magic', async () => {
      const file = sparseFile(dir, 'q.img', MiB, [[0, Buffer.from('QFI\xfb\x00\x00\x00\x03', 'latin1')]]);
      const err = await rejection(new HotaddTransport().open(disk(file, { format: 'raw' })));
      expect(err.code).to.equal('TRANSPORT_UNSUPPORTED_FORMAT');
      expect(err.where.disk).to.equal('vm1/disk0');
    });

    it('refuses formats other than raw and qcow2 without opening them', async () => {
      const err = await rejection(new HotaddTransport().open(disk(path.join(dir, 'nope.vmdk'), { format: 'vmdk' })));
      expect(err.code).to.equal('TRANSPORT_UNSUPPORTED_FORMAT');
      expect(err.detail).to.contain('raw and qcow2');
    });
  });
});
