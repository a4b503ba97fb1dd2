import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { mkntfsImage, mkswapImage, ntfscp, sfdiskImage, writeImageAt } from '../testing/disk-images.js';
import { skipUnlessTools } from '../testing/test-skips.js';
import { Prng } from '../testing/vm-image.js';
import type { DiskReader } from './disk-reader.js';
import { NtfsVolume } from './ntfs.js';
import { findSwapAreas } from './swap-areas.js';

const MiB = 1024 * 1024;
const EXPECTED = new Set(['DISK_FORMAT_INVALID', 'DISK_FORMAT_UNSUPPORTED', 'DISK_PATH_NOT_FOUND']);

function memoryReader(bytes: Buffer): DiskReader {
  return async (offset, length) => bytes.subarray(offset, offset + length);
}

/** Runs `fn`; anything but success or a disk-format FerryError fails with what was damaged. */
async function onlyCodedErrors(what: string, fn: () => Promise<unknown>): Promise<'ok' | string> {
  try {
    await fn();
    return 'ok';
  } catch (err) {
    if (err instanceof FerryError && EXPECTED.has(err.code)) return err.code;
    throw new Error(`${what}: ${err instanceof FerryError ? err.code : 'uncoded'} ${(err as Error).message}`, { cause: err });
  }
}

/**
 * The swap filter runs on every disk by default, so the readers under it must answer a damaged disk
 * with a coded error (and the filter then skips nothing there), never with a crash or a hang:
 * random bytes are written over the structures they read, a few hundred times, bounded in time.
 */
describe('disk-format readers on damaged disks: coded errors only', function () {
  this.timeout(120_000);
  let dir: string;
  let disk: Buffer;
  let mftStart = 0;
  const ntfsStart = 2048 * 512;

  before(async function () {
    skipUnlessTools(this, { sfdisk: 'fdisk', mkswap: 'util-linux', mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-damaged-'));
    const file = path.join(dir, 'disk.img');
    await sfdiskImage(file, 24 * MiB, ['label: gpt', 'start=2048, size=24576, type=microsoft-basic-data', 'start=26624, size=8192, type=swap'].join('\n'));
    const ntfs = path.join(dir, 'ntfs.img');
    await mkntfsImage(ntfs, 12 * MiB);
    const src = path.join(dir, 'src');
    await writeFile(src, Buffer.alloc(300_000, 7));
    ntfscp(ntfs, src, 'pagefile.sys');
    for (let i = 0; i < 30; i++) ntfscp(ntfs, src, `file-${i}.bin`);
    await writeImageAt(file, ntfsStart, ntfs);
    const swap = path.join(dir, 'swap.img');
    await mkswapImage(swap, 4 * MiB);
    await writeImageAt(file, 26624 * 512, swap);
    disk = await readFile(file);
    mftStart = ntfsStart + Number(disk.readBigUInt64LE(ntfsStart + 0x30)) * 4096;
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('finds the swap partition and the pagefile on the undamaged disk', async function () {
    const areas = await findSwapAreas(memoryReader(disk), disk.length);
    expect(areas.map((a) => a.kind)).to.deep.equal(['pagefile', 'linux-swap']);
  });

  it('answers a few hundred random damages to the MFT, boot sector, GPT and swap header with coded errors', async function () {
    const rng = new Prng(77);
    const volume = await NtfsVolume.open(memoryReader(disk.subarray(ntfsStart)), 12 * MiB);
    const rootIndex = (await volume.list('/')).length;
    expect(rootIndex).to.be.above(30);
    const targets = [
      { from: mftStart, length: 64 * 1024, what: 'MFT' },
      { from: 0, length: 34 * 512, what: 'GPT' },
      { from: ntfsStart, length: 512, what: 'NTFS boot sector' },
      { from: 26624 * 512, length: 4096, what: 'swap header' },
    ];
    const outcomes = new Map<string, number>();
    const deadline = Date.now() + 60_000;
    for (let i = 0; i < 300 && Date.now() < deadline; i++) {
      const t = targets[i % targets.length]!;
      const at = t.from + rng.int(t.length - 8);
      const saved = Buffer.from(disk.subarray(at, at + 8));
      const n = 1 + rng.int(8);
      for (let k = 0; k < n; k++) disk[at + k] = rng.int(256);
      const what = `${t.what} byte ${at - t.from} (try ${i})`;
      const a = await onlyCodedErrors(what, async () => {
        const v = await NtfsVolume.open(memoryReader(disk.subarray(ntfsStart)), 12 * MiB);
        for (const e of await v.list('/')) {
          await v.extents(e);
          if (!e.isDirectory) await v.readFile(e, 0, 4096);
        }
      });
      const b = await onlyCodedErrors(what, () => findSwapAreas(memoryReader(disk), disk.length));
      for (const o of [a, b]) outcomes.set(o, (outcomes.get(o) ?? 0) + 1);
      saved.copy(disk, at);
    }
    // Both paths were taken: damage that the checks catch, and damage in bytes nobody reads.
    expect(outcomes.get('ok') ?? 0).to.be.above(0);
    expect(outcomes.get('DISK_FORMAT_INVALID') ?? 0).to.be.above(0);
  });
});
