import { randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { SkipContext } from '../contracts/block-filter.js';
import type { Extent } from '../contracts/extent.js';
import { openFileReader, sliceReader } from '../disk-formats/disk-reader.js';
import { NtfsVolume } from '../disk-formats/ntfs.js';
import { runBlockFilterConformance } from '../testing/block-filter-conformance.js';
import { mkntfsImage, mkswapImage, ntfscp, sfdiskImage, writeImageAt } from '../testing/disk-images.js';
import { skipUnlessTools } from '../testing/test-skips.js';
import { SwapBlockFilter } from './swap-block-filter.js';
import type { SwapAreaOptions } from '../disk-formats/swap-areas.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const TOOLS = { sfdisk: 'fdisk', mkswap: 'util-linux', mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g' };

async function patch(file: string, offset: number, bytes: Uint8Array): Promise<void> {
  const h = await open(file, 'r+');
  try {
    await h.write(bytes, 0, bytes.length, offset);
  } finally {
    await h.close();
  }
}

/** A swap area in `disk` at `start`, its pages after the header filled with random bytes. */
async function placeSwap(dir: string, disk: string, start: number, size: number, args: string[] = []): Promise<void> {
  const swap = path.join(dir, `swap-${start}.img`);
  await mkswapImage(swap, size, args);
  await writeImageAt(disk, start, swap);
  await patch(disk, start + 4096, randomBytes(size - 4096));
}

async function skipped(file: string, options: SwapAreaOptions = {}): Promise<{ extents: Extent[]; filter: SwapBlockFilter }> {
  const f = await openFileReader(file);
  try {
    const filter = new SwapBlockFilter(options);
    const context: SkipContext = { size: f.size, read: f.read };
    return { extents: await filter.skipExtents({ name: path.basename(file) }, context), filter };
  } finally {
    await f.close();
  }
}

describe('swap block filter: swap areas and paging files found on real disks', function () {
  let dir: string;
  let gpt: string;
  let ntfsPart = 0;
  before(async function () {
    skipUnlessTools(this, TOOLS);
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-swapfilter-'));
    gpt = path.join(dir, 'gpt.img');
    await sfdiskImage(gpt, 40 * MiB, [
      'label: gpt',
      'start=2048, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4',
      'start=10240, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
      'start=18432, size=32768, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
      'start=51200, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4',
      'start=59392, size=4096, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F',
    ].join('\n'));
    await patch(gpt, 2048 * 512, randomBytes(4 * MiB));
    await placeSwap(dir, gpt, 10240 * 512, 4 * MiB);
    await placeSwap(dir, gpt, 51200 * 512, 4 * MiB, ['-L', 'in-a-linux-partition']);
    // partition 5: typed swap, but holds no swap header (random data)
    await patch(gpt, 59392 * 512, randomBytes(2 * MiB));
    const ntfs = path.join(dir, 'ntfs.img');
    await mkntfsImage(ntfs, 16 * MiB);
    await writeFile(path.join(dir, 'pf'), randomBytes(MiB + 5));
    ntfscp(ntfs, path.join(dir, 'pf'), 'pagefile.sys');
    await writeFile(path.join(dir, 'hf'), Buffer.alloc(256 * KiB));
    ntfscp(ntfs, path.join(dir, 'hf'), 'hiberfil.sys');
    ntfscp(ntfs, path.join(dir, 'pf'), 'not-a-pagefile.sys');
    ntfsPart = 18432 * 512;
    await writeImageAt(gpt, ntfsPart, ntfs);
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  async function ntfsExtents(file: string, name: string): Promise<Extent[]> {
    const f = await openFileReader(file);
    try {
      const v = await NtfsVolume.open(sliceReader(f.read, ntfsPart), 16 * MiB);
      return (await v.extents(`/${name}`)).map((e) => ({ offset: ntfsPart + e.volumeOffset, length: e.length }));
    } finally {
      await f.close();
    }
  }

  it('skips swap partitions after their header page, and pagefile.sys and hiberfil.sys clusters', async function () {
    const { extents, filter } = await skipped(gpt);
    const expected = [
      { offset: 10240 * 512 + 4096, length: 4 * MiB - 4096 },
      ...(await ntfsExtents(gpt, 'pagefile.sys')),
      ...(await ntfsExtents(gpt, 'hiberfil.sys')),
      { offset: 51200 * 512 + 4096, length: 4 * MiB - 4096 },
    ].sort((a, b) => a.offset - b.offset);
    const merged = expected.reduce<Extent[]>((out, e) => {
      const last = out.at(-1);
      if (last && last.offset + last.length === e.offset) last.length += e.length;
      else out.push({ ...e });
      return out;
    }, []);
    expect(extents).to.deep.equal(merged);
    const found = filter.found.get('gpt.img')!;
    expect(found.areas.map((a) => [a.kind, a.where])).to.deep.equal([
      ['linux-swap', 'partition 2 (linux-swap)'],
      ['pagefile', 'partition 3 (microsoft-basic-data): /pagefile.sys'],
      ['hiberfil', 'partition 3 (microsoft-basic-data): /hiberfil.sys'],
      ['linux-swap', 'partition 4 (linux)'],
    ]);
    expect(found.notes.join('\n')).to.match(/partition 5 \(linux-swap\): typed linux-swap but holds no swap header: kept/);
  });

  it('honours its options: swapMatch both and type, windowsPaging and hibernation off', async function () {
    const both = (await skipped(gpt, { swapMatch: 'both', windowsPaging: false, hibernation: false })).extents;
    expect(both).to.deep.equal([{ offset: 10240 * 512 + 4096, length: 4 * MiB - 4096 }]);
    const type = (await skipped(gpt, { swapMatch: 'type', windowsPaging: false, hibernation: false })).extents;
    // partition 5 (typed swap, no header) wholly, merged with partition 4's swap area before it
    expect(type.at(-1)).to.deep.equal({ offset: 51200 * 512 + 4096, length: 4 * MiB - 4096 + 2 * MiB });
    const none = (await skipped(gpt, { linuxSwap: false, windowsPaging: false, hibernation: false })).extents;
    expect(none).to.deep.equal([]);
  });

  it('keeps swap holding a hibernation image and a hiberfil.sys to resume from', async function () {
    const copy = path.join(dir, 'hibernated.img');
    await copyFile(gpt, copy);
    await patch(copy, 10240 * 512 + 4096 - 10, Buffer.from('S1SUSPEND\0', 'latin1'));
    const [hib] = await ntfsExtents(copy, 'hiberfil.sys');
    await patch(copy, hib!.offset, Buffer.from('HIBR'));
    const { extents, filter } = await skipped(copy);
    expect(extents.some((e) => e.offset < 14336 * 512 && e.offset + e.length > 10240 * 512)).to.equal(false);
    expect(extents.some((e) => e.offset <= hib!.offset && e.offset + e.length > hib!.offset)).to.equal(false);
    expect(filter.found.get('hibernated.img')!.notes.join('\n')).to.match(/hibernation image \(S1SUSPEND\).*\n?.*hiberfil.sys holds a hibernation image/s);
  });

  it('finds a logical swap partition of an MBR, and swap on a whole disk', async function () {
    const mbr = path.join(dir, 'mbr.img');
    await sfdiskImage(mbr, 16 * MiB, ['label: dos', 'start=2048, size=4096, type=83', 'start=6144, size=24576, type=5', 'start=8192, size=8192, type=82'].join('\n'));
    await placeSwap(dir, mbr, 8192 * 512, 4 * MiB);
    expect((await skipped(mbr)).extents).to.deep.equal([{ offset: 8192 * 512 + 4096, length: 4 * MiB - 4096 }]);
    const whole = path.join(dir, 'whole.img');
    await mkswapImage(whole, 3 * MiB + 512);
    expect((await skipped(whole)).extents).to.deep.equal([{ offset: 4096, length: 3 * MiB - 4096 }]);
  });

  it('skips nothing on a disk whose partition table is broken, and says why', async function () {
    const broken = path.join(dir, 'broken.img');
    await sfdiskImage(broken, 8 * MiB, ['label: gpt', 'start=2048, size=8192, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F'].join('\n'));
    await placeSwap(dir, broken, 2048 * 512, 4 * MiB);
    await patch(broken, 512, Buffer.from('XXXXXXXX'));
    await patch(broken, 8 * MiB - 512, Buffer.from('XXXXXXXX'));
    const { extents, filter } = await skipped(broken);
    expect(extents).to.deep.equal([]);
    expect(filter.found.get('broken.img')!.notes.join()).to.match(/partition table not read, nothing skipped: DISK_FORMAT_INVALID/);
  });
});

runBlockFilterConformance('swap', () => new SwapBlockFilter(), {
  needs: { sfdisk: 'fdisk', mkswap: 'util-linux' },
  minSkipRanges: 1,
  image: async (file, size) => {
    await sfdiskImage(file, size, ['label: gpt', 'start=2048, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4', 'start=6144, size=8192'].join('\n'));
    const swap = `${file}.swap`;
    await mkswapImage(swap, 4 * MiB);
    await writeImageAt(file, 6144 * 512, swap);
    await rm(swap);
  },
});
