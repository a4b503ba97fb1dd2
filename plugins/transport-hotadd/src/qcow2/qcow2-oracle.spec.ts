import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { DiskHandle, SourceDisk } from '@ferry/core/plugin';
import { makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { readAtFile, type ReadAt } from '../hotadd-disk-handle.js';
import { HotaddTransport } from '../hotadd-transport.js';
import {
  createQcow2,
  expectSameBytes,
  GiB,
  KiB,
  MiB,
  oracleBytes,
  oracleHostRanges,
  oracleMap,
  qemuImg,
  QEMU_TOOLS,
  qemuIo,
  readWhole,
  virtualSize,
  wholeStatus,
} from './spec-support/qemu-tools.js';

// Every case builds a real image with QEMU's tools and checks the reader against QEMU itself: every
// byte against `qemu-img convert -O raw`, and block status against `qemu-img map` (data vs zero).
describe('qcow2 through hot-add, checked against qemu-img', function () {
  this.timeout(30_000);
  let dir: string;
  let handles: DiskHandle[];
  const file = (name: string): string => path.join(dir, name);

  const open = async (image: string, t = new HotaddTransport()): Promise<DiskHandle> => {
    const h = await t.open({ name: 'vm1/disk0', path: image, format: 'qcow2' } satisfies SourceDisk);
    handles.push(h);
    return h;
  };

  /** The reader agrees with QEMU on size, every byte and the allocation of `image`. */
  const expectLikeQemu = async (image: string): Promise<DiskHandle> => {
    const h = await open(image);
    expect(h.size, 'virtual size').to.equal(virtualSize(image));
    expectSameBytes(await readWhole(h), oracleBytes(image), path.basename(image));
    expect(await wholeStatus(h), `block status of ${path.basename(image)}`).to.deep.equal(oracleMap(image));
    return h;
  };

  before(function () {
    skipUnlessTools(this, QEMU_TOOLS);
  });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-qcow2-'));
    handles = [];
  });
  afterEach(async () => {
    for (const h of handles) await h.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('reads a plain v3 image written by qemu-io, with unaligned writes', async () => {
    const image = createQcow2(file('plain.qcow2'), '8M');
    qemuIo(image, 'write -P 0x11 0 100k', 'write -P 0x22 1M 64k', 'write -P 0x33 3146962 5000', 'write -P 0x44 8388096 512');
    await expectLikeQemu(image);
  });

  it('reads zero clusters as zeros, over data and over a backing file (zero flag, preallocated or not)', async () => {
    const base = createQcow2(file('base.qcow2'), '4M');
    qemuIo(base, 'write -P 0x55 0 4M');
    const image = createQcow2(file('zero.qcow2'), '4M', [], { file: 'base.qcow2', format: 'qcow2' });
    qemuIo(image, 'write -P 0x11 0 256k', 'write -z 64k 64k', 'write -z -u 128k 64k', 'write -z 1M 192k', 'write -z 3M 4k');
    await expectLikeQemu(image);
  });

  // Each cluster size puts the descriptor's offset/sector-count split at a different bit.
  for (const [cluster, size] of [['512', MiB + 4096], ['64k', 4 * MiB + 4096], ['2M', 5 * MiB + 4096]] as const) {
    it(`reads a compressed image (qemu-img convert -c, ${cluster} clusters)`, async () => {
      const raw = file('source.raw');
      await makeVmImage(raw, { sizeBytes: size, seed: 11, holes: 0.3, unit: 32 * KiB });
      const image = file('compressed.qcow2');
      qemuImg('convert', '-q', '-c', '-f', 'raw', '-O', 'qcow2', '-o', `cluster_size=${cluster}`, raw, image);
      await expectLikeQemu(image);
      expectSameBytes(fs.readFileSync(raw), oracleBytes(image), 'the oracle itself');
    });
  }

  it('reads a version 2 image (compat=0.10)', async () => {
    const image = createQcow2(file('v2.qcow2'), '3M', ['compat=0.10']);
    qemuIo(image, 'write -P 0x11 0 200k', 'write -z 64k 64k', 'write -P 0x22 2M 1000');
    expect(fs.readFileSync(image).readUInt32BE(4)).to.equal(2);
    await expectLikeQemu(image);
  });

  for (const [cluster, l2Span] of [['512', 32 * KiB], ['64k', 512 * MiB], ['2M', 512 * GiB]] as const) {
    it(`reads ${cluster} clusters, across cluster and L2 table boundaries`, async () => {
      const image = createQcow2(file(`c${cluster}.qcow2`), '12M', [`cluster_size=${cluster}`]);
      const edge = Math.min(l2Span, 8 * MiB);
      qemuIo(image, 'write -P 0x11 0 1000', `write -P 0x22 ${edge - 3000} 7000`, 'write -P 0x33 2M 2M', 'write -z 3M 64k', 'write -P 0x44 9437000 300000');
      await expectLikeQemu(image);
    });
  }

  it('reads a backing chain of 3 (raw -> qcow2 -> qcow2) with overlapping writes and size changes', async () => {
    const base = file('base.raw');
    const fd = fs.openSync(base, 'w');
    fs.ftruncateSync(fd, 3 * MiB);
    fs.writeSync(fd, Buffer.alloc(512 * KiB, 0xb0), 0, 512 * KiB, 0);
    fs.writeSync(fd, Buffer.alloc(300 * KiB, 0xb1), 0, 300 * KiB, 2 * MiB);
    fs.closeSync(fd);
    // The middle image is larger than the raw base, the top smaller than the middle.
    const mid = createQcow2(file('mid.qcow2'), '5M', [], { file: 'base.raw', format: 'raw' });
    qemuIo(mid, 'write -P 0xc0 256k 512k', 'write -P 0xc1 2900k 200k', 'write -P 0xc2 4M 128k');
    fs.mkdirSync(file('vm'));
    const top = createQcow2(file('vm/top.qcow2'), '4M', ['cluster_size=4k'], { file: '../mid.qcow2', format: 'qcow2' });
    qemuIo(top, 'write -P 0xd0 500k 100k', 'write -z 2M 8k', 'write -P 0xd1 3M 4k');
    const h = await expectLikeQemu(top);
    expect(h.size).to.equal(4 * MiB);
    const probe = await new HotaddTransport().probe({ name: 'vm1/disk0', path: top, format: 'qcow2' });
    expect(probe).to.deep.equal({ ok: true, reason: `datastore path ${top} (qcow2, backing chain of 3) is readable from this proxy` });
  });

  it('still answers block status without the seek addon, calling a raw base all data, and the probe says so', async () => {
    const base = file('base.raw');
    fs.writeFileSync(base, Buffer.alloc(0));
    fs.truncateSync(base, MiB);
    const image = createQcow2(file('top.qcow2'), '2M', [], { file: 'base.raw', format: 'raw' });
    qemuIo(image, 'write -P 0x11 64k 64k', 'write -z 1M 64k');
    const t = new HotaddTransport({ seek: null });
    const h = await open(image, t);
    expect(await wholeStatus(h)).to.deep.equal([
      { offset: 0, length: MiB, kind: 'data' },
      { offset: MiB, length: MiB, kind: 'zero' },
    ]);
    expectSameBytes(await readWhole(h), oracleBytes(image), 'top.qcow2');
    const probe = await t.probe({ name: 'vm1/disk0', path: image, format: 'qcow2' });
    expect(probe.reason).to.contain(`holes of the raw backing file ${base} are read as data`);
  });

  it('reads an image whose size is not a multiple of the cluster size', async () => {
    const image = createQcow2(file('odd.qcow2'), String(5 * MiB + 1536));
    qemuIo(image, 'write -P 0x11 5240000 3904', 'write -P 0x22 0 512');
    const h = await expectLikeQemu(image);
    expect(h.size).to.equal(5 * MiB + 1536);
  });

  it('reads extended L2 entries (subclusters) over a backing file', async () => {
    const base = createQcow2(file('base.qcow2'), '2M');
    qemuIo(base, 'write -P 0x55 0 2M');
    const image = createQcow2(file('sub.qcow2'), '2M', ['extended_l2=on', 'cluster_size=64k'], { file: 'base.qcow2', format: 'qcow2' });
    qemuIo(image, 'write -P 0x11 4k 8k', 'write -z 64k 4k', 'write -P 0x22 70k 2k', 'write -P 0x33 1M 64k', 'write -z 1M 6k');
    await expectLikeQemu(image);
  });

  it('reads an image left dirty by a crashed QEMU, and the probe says so', async () => {
    const image = createQcow2(file('dirty.qcow2'), '1M', ['lazy_refcounts=on']);
    try {
      qemuIo(image, 'write -P 0x33 0 8k', 'write -P 0x34 512k 4k', 'abort');
    } catch {
      // qemu-io dies by abort(3) on purpose, leaving the dirty bit set
    }
    expect(fs.readFileSync(image).readBigUInt64BE(72) & 1n).to.equal(1n);
    await expectLikeQemu(image);
    const probe = await new HotaddTransport().probe({ name: 'vm1/disk0', path: image });
    expect(probe.ok).to.equal(true);
    expect(probe.reason).to.contain('dirty bit');
  });

  it('answers block status of an almost empty 10 GiB image from metadata alone, fast', async () => {
    const image = createQcow2(file('big.qcow2'), '10G');
    qemuIo(image, 'write -P 0x11 0 64k', 'write -P 0x22 5G 4k', 'write -P 0x33 10239M 1M');
    const reads: { position: number; length: number }[] = [];
    const readAt: ReadAt = (fh, into, at, length, position) => {
      reads.push({ position, length });
      return readAtFile(fh, into, at, length, position);
    };
    const h = await open(image, new HotaddTransport({ readAt }));
    const started = performance.now();
    const status = await wholeStatus(h);
    expect(performance.now() - started, 'milliseconds for block status').to.be.below(500);
    expect(status).to.deep.equal(oracleMap(image));
    for (const data of oracleHostRanges(image)) {
      const touched = reads.filter((r) => r.position < data.offset + data.length && data.offset < r.position + r.length);
      expect(touched, `reads of the data cluster at file offset ${data.offset}`).to.deep.equal([]);
    }
    // Every byte of the data extents against QEMU's (sparse) raw copy; the zero extents were
    // checked against qemu-img map above, and a sample of them is read back as zeros.
    const raw = file('big.raw');
    qemuImg('convert', '-O', 'raw', image, raw);
    const fd = fs.openSync(raw, 'r');
    try {
      for (const e of status) {
        const length = e.kind === 'data' ? e.length : Math.min(e.length, MiB);
        const want = Buffer.alloc(length);
        fs.readSync(fd, want, 0, length, e.offset);
        expectSameBytes(Buffer.from(await h.read(e.offset, length)), want, `${e.kind} extent at ${e.offset}`);
      }
    } finally {
      fs.closeSync(fd);
    }
  });
});
