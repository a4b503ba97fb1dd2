import { randomBytes, createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, openSync, closeSync, readFileSync, readSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { decodeBlock } from '@ferry/core';
import { initCerts } from '@ferry/core/remote/wire';
import { firstDifference, mkntfsImage, mkswapImage, ntfscp, runTool, sfdiskImage, skipUnlessTools, writeImageAt } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { storedBlocks } from './support/repo-inspect.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const PAGE = 4096;

interface DiskJson {
  disk: string;
  status: string;
  sizeBytes: number;
  bytesRead: number;
  bytesWritten: number;
  swapBytesSkipped: number;
  restorePoint: string;
  blocks: { filtered?: Record<string, number> };
}
interface ReportJson {
  status: string;
  disks: DiskJson[];
  totals: { swapBytesSkipped: number; bytesRead: number };
  error?: { message: string };
}

/** Writes `bytes` into `file` at `offset`. */
function put(file: string, offset: number, bytes: Uint8Array): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    closeSync(fd);
  }
}

function readAt(file: string, offset: number, length: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** `file` with the given ranges zeroed: what a restore of it must give. */
function withZeros(file: string, out: string, ranges: { offset: number; length: number }[]): void {
  copyFileSync(file, out);
  for (const r of ranges) put(out, r.offset, Buffer.alloc(r.length));
}

/** SHA-256 of every 4 KiB page of every block the repository stores (blocks stored uncompressed). */
function storedPages(repo: string): Set<string> {
  const none = { compress: (d: Uint8Array) => d, decompress: (d: Uint8Array) => d };
  const pages = new Set<string>();
  for (const b of storedBlocks(repo)) {
    const raw = decodeBlock(readAt(b.file, b.offset, b.length), b.hash, (n) => (n === 'none' ? none : undefined));
    for (let at = 0; at + PAGE <= raw.length; at += PAGE) pages.add(createHash('sha256').update(raw.subarray(at, at + PAGE)).digest('hex'));
  }
  return pages;
}

function pageHashes(data: Buffer): string[] {
  const out: string[] = [];
  for (let at = 0; at + PAGE <= data.length; at += PAGE) out.push(createHash('sha256').update(data.subarray(at, at + PAGE)).digest('hex'));
  return out;
}

/** The clusters of `/name` as ntfsinfo lists them: byte ranges of the volume. */
function ntfsinfoExtents(image: string, name: string, clusterSize: number): { offset: number; length: number }[] {
  const info = runTool('ntfsinfo', ['-F', `/${name}`, '-v', image]);
  return [...info.matchAll(/^\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)$/gm)].map((m) => ({
    offset: Number.parseInt(m[1]!, 16) * clusterSize,
    length: Number.parseInt(m[2]!, 16) * clusterSize,
  }));
}

/**
 * Swap and pagefile exclusion without guest access, through the CLI: real GPT and MBR disks made by
 * sfdisk, an ext4 partition (mkfs.ext4 -E offset=), swap areas made by mkswap full of random pages,
 * and an NTFS partition (mkntfs, ntfscp) holding a pagefile.sys of random data. The default filters
 * find them on the disk itself: those bytes are never read nor stored, a restore has zeros there and
 * a valid swap header, and every other byte restores identical.
 */
describe('swap and pagefile exclusion (filters: [zero, swap] by default)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-swap-');
  const images = path.join(t.dir, 'images');
  const gpt = path.join(images, 'linux.raw');
  const mbr = path.join(images, 'windows.raw');
  const swapA = { offset: 17 * MiB, length: 16 * MiB };
  const swapB = { offset: 53248 * 512, length: 8 * MiB };
  const ntfsStart = 2048 * 512;
  let swapData: Buffer[] = [];
  let pagefile: Buffer;
  let pagefileRanges: { offset: number; length: number }[] = [];
  let job: string;
  let report: ReportJson;

  before(async function () {
    skipUnlessTools(this, { sfdisk: 'fdisk', mkswap: 'util-linux', blkid: 'util-linux', 'mkfs.ext4': 'e2fsprogs', mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g', ntfsinfo: 'ntfs-3g' });
    mkdirSync(images);
    // Disk 1, GPT: an ext4 file system with files, then a Linux swap partition full of random pages.
    await sfdiskImage(gpt, 40 * MiB, ['label: gpt', 'start=2048, size=32768, type=linux, name="root"', 'start=34816, size=32768, type=swap, name="swap"'].join('\n'));
    const files = path.join(t.dir, 'files');
    mkdirSync(files);
    writeFileSync(path.join(files, 'data.bin'), randomBytes(3 * MiB));
    writeFileSync(path.join(files, 'notes.txt'), 'kept as it is\n'.repeat(1000));
    runTool('mkfs.ext4', ['-q', '-F', '-E', `offset=${MiB}`, '-d', files, gpt, '16M']);
    // Disk 2, MBR: NTFS with pagefile.sys (random) and a file, then a logical swap partition.
    await sfdiskImage(mbr, 40 * MiB, ['label: dos', 'start=2048, size=49152, type=7', 'start=51200, size=28672, type=5', 'start=53248, size=16384, type=82'].join('\n'));
    const ntfs = path.join(t.dir, 'ntfs.img');
    await mkntfsImage(ntfs, 24 * MiB);
    pagefile = randomBytes(8 * MiB + 100);
    writeFileSync(path.join(t.dir, 'pf'), pagefile);
    ntfscp(ntfs, path.join(t.dir, 'pf'), 'pagefile.sys');
    writeFileSync(path.join(t.dir, 'doc'), randomBytes(MiB));
    ntfscp(ntfs, path.join(t.dir, 'doc'), 'document.bin');
    pagefileRanges = ntfsinfoExtents(ntfs, 'pagefile.sys', 4096).map((e) => ({ offset: ntfsStart + e.offset, length: e.length }));
    await writeImageAt(mbr, ntfsStart, ntfs);
    swapData = [];
    for (const [disk, area] of [[gpt, swapA], [mbr, swapB]] as const) {
      const swap = path.join(t.dir, `swap-${path.basename(disk)}`);
      await mkswapImage(swap, area.length, ['-L', 'ferry-test']);
      await writeImageAt(disk, area.offset, swap);
      const pages = randomBytes(area.length - PAGE);
      put(disk, area.offset + PAGE, pages);
      swapData.push(pages);
    }
    job = writeJob(t.dir, basicJob({ disks: ['linux.raw', 'windows.raw'], compression: 'none' }));
    const r = await runFerry(['backup', job, '--json']);
    report = json<ReportJson>(r);
    expect(report.status, r.stderr + JSON.stringify(report.error)).to.equal('success');
  });
  after(() => t.cleanup());

  it('reports swapBytesSkipped per disk and in the totals, and reads none of those bytes', function () {
    const [a, b] = report.disks;
    const pagefileBytes = pagefileRanges.reduce((n, e) => n + e.length, 0);
    expect(pagefileBytes).to.be.at.least(pagefile.length);
    expect(a!.swapBytesSkipped).to.equal(swapA.length - PAGE);
    expect(b!.swapBytesSkipped).to.equal(swapB.length - PAGE + pagefileBytes);
    expect(report.totals.swapBytesSkipped).to.equal(a!.swapBytesSkipped + b!.swapBytesSkipped);
    for (const d of report.disks) {
      expect(d.bytesRead + d.swapBytesSkipped, d.disk).to.be.at.most(d.sizeBytes);
      // Nothing of the random swap or pagefile bytes was stored: only the file systems' data is new.
      expect(d.bytesWritten, d.disk).to.be.below(d.sizeBytes - d.swapBytesSkipped);
    }
    expect(a!.bytesWritten).to.be.below(6 * MiB);
    expect(b!.bytesWritten).to.be.below(6 * MiB);
  });

  it('stores no page of the random swap areas and pagefile', function () {
    const stored = storedPages(path.join(t.dir, 'repo'));
    expect(stored.size).to.be.above(100);
    const secret = [...swapData.flatMap(pageHashes), ...pageHashes(pagefile)];
    expect(secret.filter((h) => stored.has(h))).to.deep.equal([]);
    // ... while the ext4 partition's random file is there.
    const data = readAt(gpt, MiB, 16 * MiB);
    expect(pageHashes(data).filter((h) => stored.has(h)).length).to.be.above(700);
  });

  it('restores zeros in the skipped ranges, a valid swap header, and every other byte identical', async function () {
    const cases = [
      { disk: 'linux.raw', source: gpt, skipped: [{ offset: swapA.offset + PAGE, length: swapA.length - PAGE }], swap: swapA },
      { disk: 'windows.raw', source: mbr, skipped: [{ offset: swapB.offset + PAGE, length: swapB.length - PAGE }, ...pagefileRanges], swap: swapB },
    ];
    for (const c of cases) {
      const out = path.join(t.dir, `restored-${c.disk}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', c.disk, '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      const expected = path.join(t.dir, `expected-${c.disk}`);
      withZeros(c.source, expected, c.skipped);
      expect(await firstDifference(expected, out), c.disk).to.equal(-1);
      const blkid = runTool('blkid', ['-p', '-o', 'export', '-O', String(c.swap.offset), out]);
      expect(blkid, c.disk).to.match(/^TYPE=swap$/m);
      expect(blkid).to.match(/^LABEL=ferry-test$/m);
      const uuid = (text: string): string | undefined => /^UUID=(\S+)$/m.exec(text)?.[1];
      expect(uuid(blkid)).to.be.a('string').and.equal(uuid(runTool('blkid', ['-p', '-o', 'export', '-O', String(c.swap.offset), c.source])));
    }
    // The ext4 partition is byte-identical, and blkid still sees it.
    const restored = path.join(t.dir, 'restored-linux.raw');
    expect(readAt(restored, MiB, 16 * MiB).equals(readAt(gpt, MiB, 16 * MiB))).to.equal(true);
    expect(runTool('blkid', ['-p', '-o', 'export', '-O', String(MiB), restored])).to.match(/^TYPE=ext4$/m);
  });

  it('with filters: [zero] everything is read and stored again', async function () {
    const plain = writeJob(t.dir, basicJob({ disks: ['linux.raw'], compression: 'none', repo: './repo-plain', extra: 'filters: [zero]' }), 'plain.yaml');
    const r = json<ReportJson>(await runFerry(['backup', plain, '--json']));
    expect(r.status).to.equal('success');
    expect(r.disks[0]!.swapBytesSkipped).to.equal(0);
    expect(r.disks[0]!.bytesWritten).to.be.above(swapA.length);
  });

  describe('through a remote proxy', function () {
    const services: ServiceProcess[] = [];
    after(async () => Promise.all(services.map((s) => s.stop())));

    it('skips the same bytes and reports them', async function () {
      const certs = path.join(t.dir, 'certs');
      await initCerts(certs);
      services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]));
      services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo-remote')]));
      const remote = writeJob(t.dir, remoteJob({ server: services[1]!.address, proxies: [services[0]!.address], certs, disks: ['linux.raw'], extra: 'filters: [zero, { name: swap, swapMatch: both }]' }), 'remote.yaml');
      const r = await runFerry(['backup', remote, '--json']);
      const rep = json<ReportJson>(r);
      expect(rep.status, r.stderr + JSON.stringify(rep.error)).to.equal('success');
      expect(rep.disks[0]!.swapBytesSkipped).to.equal(swapA.length - PAGE);
      expect(rep.totals.swapBytesSkipped).to.equal(swapA.length - PAGE);
      expect(rep.disks[0]!.bytesRead + rep.disks[0]!.swapBytesSkipped).to.be.at.most(rep.disks[0]!.sizeBytes);
    });
  });
});
