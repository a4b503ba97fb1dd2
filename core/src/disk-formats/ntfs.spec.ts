import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { link, mkdir, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { mkntfsImage, ntfscp, runTool } from '../testing/disk-images.js';
import { skipBecause, skipUnlessTools } from '../testing/test-skips.js';
import { openFileReader } from './disk-reader.js';
import { NtfsVolume } from './ntfs.js';

const KiB = 1024;
const MiB = 1024 * KiB;

async function withVolume<T>(file: string, fn: (v: NtfsVolume, read: (o: number, l: number) => Promise<Uint8Array>) => Promise<T>): Promise<T> {
  const f = await openFileReader(file);
  try {
    return await fn(await NtfsVolume.open(f.read, f.size), f.read);
  } finally {
    await f.close();
  }
}

async function expectCode(p: Promise<unknown>, code: string): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal(code);
    return err as FerryError;
  }
  throw new Error(`expected ${code}`);
}

/** Names `ntfsls` lists in a directory (Win32/POSIX names, no 8.3 aliases), sorted. */
function ntfsls(image: string, dir: string): string[] {
  return runTool('ntfsls', ['-a', '-s', '-p', dir, image]).split('\n').filter((l) => l !== '' && l !== '.' && l !== '..').sort();
}

describe('NTFS reader against mkntfs and ntfscp', function () {
  let dir: string;
  let image: string;
  const files = new Map<string, Buffer>();

  before(async function () {
    skipUnlessTools(this, { mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g', ntfsls: 'ntfs-3g', ntfscluster: 'ntfs-3g', ntfstruncate: 'ntfs-3g', ntfsinfo: 'ntfs-3g' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-ntfs-'));
    image = path.join(dir, 'vol.img');
    await mkntfsImage(image, 12 * MiB, { label: 'ferry' });
    const put = async (name: string, data: Buffer): Promise<void> => {
      const src = path.join(dir, 'src');
      await writeFile(src, data);
      ntfscp(image, src, name);
      files.set(name, data);
    };
    // Enough names that the root index spills from $INDEX_ROOT into $INDEX_ALLOCATION blocks.
    for (let i = 0; i < 70; i++) await put(`file-${String(i).padStart(3, '0')}.txt`, Buffer.from(`content of file ${i}\n`.repeat(i * 3)));
    await put('Mixed Case Ñame.BIN', randomBytes(10_000));
    // Holes between files make the next file fragmented: fill the volume with 64 KiB files, empty every other.
    let n = 0;
    const src = path.join(dir, 'src');
    for (; n < 400; n++) {
      const data = randomBytes(64 * KiB);
      await writeFile(src, data);
      try {
        ntfscp(image, src, `hole-${n}.bin`);
      } catch {
        break; // the volume is full
      }
      files.set(`hole-${n}.bin`, data);
    }
    expect(n).to.be.within(20, 399);
    // ntfscp does not place them in name order: empty every other one in cluster order.
    const byCluster = [...Array(n).keys()].map((i) => {
      const info = runTool('ntfsinfo', ['-F', `/hole-${i}.bin`, '-v', image]);
      const lcn = /Runlist:.*\n\s+0x[0-9a-f]+\s+0x([0-9a-f]+)/.exec(info)![1]!;
      return { i, lcn: Number.parseInt(lcn, 16), inode: /Inode (\d+)/.exec(info)![1]! };
    });
    byCluster.sort((a, b) => a.lcn - b.lcn);
    for (let k = 0; k < byCluster.length; k += 2) {
      runTool('ntfstruncate', [image, byCluster[k]!.inode, '0']);
      files.set(`hole-${byCluster[k]!.i}.bin`, Buffer.alloc(0));
    }
    await put('pagefile.sys', randomBytes(200_003));
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('opens the volume: cluster, record and index sizes from the boot sector', async function () {
    await withVolume(image, async (v) => {
      expect(v.boot).to.include({ bytesPerSector: 512, clusterSize: 4096, recordSize: 1024, indexRecordSize: 4096 });
      expect(v.boot.totalSectors * 512).to.be.at.most(12 * MiB);
    });
  });

  it('lists the root and a system directory with the names ntfsls gives', async function () {
    await withVolume(image, async (v) => {
      const root = await v.list('/');
      expect(root.map((e) => e.name).sort()).to.deep.equal(ntfsls(image, '/'));
      expect(root.length).to.be.above(90);
      const ext = await v.list('/$Extend');
      expect(ext.map((e) => e.name).sort()).to.deep.equal(ntfsls(image, '/$Extend'));
      expect(root.find((e) => e.name === '$Extend')?.isDirectory).to.equal(true);
    });
  });

  it('stats and reads every copied file byte-identical, also case-insensitively', async function () {
    await withVolume(image, async (v) => {
      for (const [name, data] of files) {
        const e = await v.stat(`/${name}`);
        expect(e, name).to.include({ name, path: `/${name}`, isDirectory: false, size: data.length });
        expect(Buffer.from(await v.readFile(e, 0, data.length + 10)).equals(data), name).to.equal(true);
      }
      expect((await v.stat('\\MIXED CASE ñame.bin')).name).to.equal('Mixed Case Ñame.BIN');
      const part = await v.readFile('/pagefile.sys', 123_457, 1000);
      expect(Buffer.from(part).equals(files.get('pagefile.sys')!.subarray(123_457, 124_457))).to.equal(true);
      const e = await v.stat('/file-005.txt');
      expect(Math.abs(e.modified.getTime() - Date.now())).to.be.below(3_600_000);
      expect(e.attributes & 0x20).to.equal(0x20); // archive, as ntfscp sets it
    });
  });

  it("gives a fragmented file's extents: the volume's bytes there are the file", async function () {
    await withVolume(image, async (v, read) => {
      const data = files.get('pagefile.sys')!;
      const extents = await v.extents('/pagefile.sys');
      expect(extents.length, 'pagefile.sys should be fragmented by the holes').to.be.above(2);
      let covered = 0;
      for (const x of extents) {
        expect(x.fileOffset).to.equal(covered);
        const n = Math.min(x.length, data.length - x.fileOffset);
        expect(Buffer.from(await read(x.volumeOffset, n)).equals(data.subarray(x.fileOffset, x.fileOffset + n))).to.equal(true);
        covered += x.length;
      }
      expect(covered).to.equal((await v.stat('/pagefile.sys')).allocatedSize);
      expect(covered).to.be.at.least(data.length);
      // ntfsinfo's run list for the same file names the same clusters.
      const runs = [...runTool('ntfsinfo', ['-F', '/pagefile.sys', '-v', image]).matchAll(/^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)$/gm)];
      const clusters = runs.reduce((n, m) => n + Number.parseInt(m[3]!, 16), 0);
      expect(clusters * 4096).to.equal(covered);
    });
  });

  it('names missing paths and files used as directories DISK_PATH_NOT_FOUND', async function () {
    await withVolume(image, async (v) => {
      await expectCode(v.stat('/no-such-file'), 'DISK_PATH_NOT_FOUND');
      await expectCode(v.stat('/file-001.txt/x'), 'DISK_PATH_NOT_FOUND');
      await expectCode(v.list('/file-001.txt'), 'DISK_PATH_NOT_FOUND');
      await expectCode(v.readFile('/$Extend'), 'DISK_PATH_NOT_FOUND');
    });
  });

  it('refuses damaged structures with DISK_FORMAT_INVALID', async function () {
    const copy = path.join(dir, 'bad.img');
    const bytes = await readFile(image);
    await writeFile(copy, bytes);
    await withVolume(copy, async (v) => {
      const root = await v.stat('/');
      expect(root.isDirectory).to.equal(true);
    });
    // A torn write in record 5 (the root directory): the end of its first stride no longer matches.
    const mftLcn = Number(bytes.readBigUInt64LE(0x30));
    const rootRecord = mftLcn * 4096 + 5 * 1024;
    const h = await open(copy, 'r+');
    await h.write(Buffer.from([0xde, 0xad]), 0, 2, rootRecord + 510);
    await h.close();
    const err = await withVolume(copy, (v) => expectCode(v.list('/'), 'DISK_FORMAT_INVALID'));
    expect(err.message).to.match(/MFT record 5.*update sequence/);
    // Not NTFS at all.
    await writeFile(copy, Buffer.alloc(MiB));
    const f = await openFileReader(copy);
    try {
      expect(await NtfsVolume.probe(f.read, f.size)).to.equal(false);
      await expectCode(NtfsVolume.open(f.read, f.size), 'DISK_FORMAT_INVALID');
    } finally {
      await f.close();
    }
  });
});

describe('NTFS reader with small and large clusters (index block VCNs in clusters or in 512-byte units)', function () {
  let dir: string;
  before(async function () {
    skipUnlessTools(this, { mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g', ntfsls: 'ntfs-3g' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-ntfs-clusters-'));
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  for (const clusterSize of [512, 65536]) {
    it(`reads a volume of ${clusterSize}-byte clusters`, async function () {
      const image = path.join(dir, `c${clusterSize}.img`);
      await mkntfsImage(image, 32 * MiB, { clusterSize });
      const data = randomBytes(300_001);
      const src = path.join(dir, 'src');
      await writeFile(src, data);
      for (let i = 0; i < 40; i++) ntfscp(image, src, `a-long-enough-name-to-fill-index-blocks-${i}.bin`);
      await withVolume(image, async (v, read) => {
        expect(v.clusterSize).to.equal(clusterSize);
        expect((await v.list('/')).map((e) => e.name).sort()).to.deep.equal(ntfsls(image, '/'));
        const e = await v.stat('/a-long-enough-name-to-fill-index-blocks-39.bin');
        expect(Buffer.from(await v.readFile(e, 0, data.length)).equals(data)).to.equal(true);
        const parts = await Promise.all((await v.extents(e)).map((x) => read(x.volumeOffset, x.length)));
        expect(Buffer.concat(parts).subarray(0, data.length).equals(data)).to.equal(true);
      });
    });
  }
});

describe('NTFS reader on a tree written through ntfs-3g (FUSE)', function () {
  let dir: string;
  let image: string;
  const content = new Map<string, Buffer>();

  before(async function () {
    skipUnlessTools(this, { mkntfs: 'ntfs-3g', 'ntfs-3g': 'ntfs-3g' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-ntfs-fuse-'));
    image = path.join(dir, 'vol.img');
    await mkntfsImage(image, 16 * MiB);
    const mnt = path.join(dir, 'mnt');
    await mkdir(mnt);
    try {
      runTool('ntfs-3g', [image, mnt]);
    } catch (err) {
      skipBecause(this, `ntfs-3g cannot mount here (no FUSE?): ${(err as Error).message.split('\n')[0]}`);
    }
    try {
      // Two files appended in turns get interleaved clusters; many hard links push the names of
      // the first into extension records, reached through its $ATTRIBUTE_LIST.
      const [a, b] = [openSync(path.join(mnt, 'frag-a.bin'), 'a'), openSync(path.join(mnt, 'frag-b.bin'), 'a')];
      const chunks: Buffer[][] = [[], []];
      for (let i = 0; i < 120; i++) {
        for (const [k, fd] of [a, b].entries()) {
          const chunk = randomBytes(4096);
          writeSync(fd, chunk);
          fsyncSync(fd);
          chunks[k]!.push(chunk);
        }
      }
      closeSync(a);
      closeSync(b);
      content.set('/frag-a.bin', Buffer.concat(chunks[0]!));
      content.set('/frag-b.bin', Buffer.concat(chunks[1]!));
      await mkdir(path.join(mnt, 'd1/d2/d3'), { recursive: true });
      await writeFile(path.join(mnt, 'd1/d2/d3/deep.txt'), 'deep');
      content.set('/d1/d2/d3/deep.txt', Buffer.from('deep'));
      for (let i = 0; i < 15; i++) {
        const name = `/d1/a-rather-long-hard-link-name-that-fills-the-mft-record-${i}.bin`;
        await link(path.join(mnt, 'frag-a.bin'), path.join(mnt, name));
        content.set(name, content.get('/frag-a.bin')!);
      }
      const s = openSync(path.join(mnt, 'sparse.bin'), 'w');
      writeSync(s, Buffer.from('end'), 0, 3, 5 * MiB);
      closeSync(s);
      content.set('/sparse.bin', Buffer.concat([Buffer.alloc(5 * MiB), Buffer.from('end')]));
    } finally {
      runTool('umount', [mnt]);
    }
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('reads nested directories, hard links, sparse and fragmented files, and attribute lists', async function () {
    expect(runTool('ntfsinfo', ['-F', '/frag-a.bin', image])).to.match(/\$ATTRIBUTE_LIST/);
    await withVolume(image, async (v, read) => {
      for (const [p, data] of content) {
        const e = await v.stat(p);
        expect(e.size, p).to.equal(data.length);
        expect(Buffer.from(await v.readFile(e, 0, data.length)).equals(data), p).to.equal(true);
      }
      expect((await v.list('/d1')).map((e) => e.name).sort()).to.deep.equal(ntfsls(image, '/d1'));
      expect((await v.list('/d1/d2/d3')).map((e) => e.name)).to.deep.equal(['deep.txt']);
      const frag = await v.extents('/frag-a.bin');
      expect(frag.length).to.be.above(10);
      const parts = await Promise.all(frag.map((x) => read(x.volumeOffset, x.length)));
      expect(Buffer.concat(parts).subarray(0, 120 * 4096).equals(content.get('/frag-a.bin')!)).to.equal(true);
      const sparse = await v.extents('/sparse.bin');
      expect(sparse.reduce((n, x) => n + x.length, 0)).to.be.below(64 * KiB);
      expect(sparse[0]!.fileOffset).to.be.at.least(5 * MiB - 64 * KiB);
    });
  });
});
