import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, openSync, readFileSync, readSync, closeSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync, writeSync, chmodSync, fstatSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, isFerryError } from '../errors.js';
import { skipForMissingTools } from '../testing/test-skips.js';
import { Ext4FileSystem, isExt4 } from './ext4.js';
import type { ByteReader, FileSystem } from './file-system.js';

const SBIN = ['/usr/sbin', '/sbin'];
function tool(name: string): string | undefined {
  for (const dir of (process.env.PATH ?? '').split(':').concat(SBIN)) {
    try {
      if (statSync(path.join(dir, name)).isFile()) return path.join(dir, name);
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** A reader over an image file that counts what it reads. */
export function fileReader(file: string): ByteReader & { calls: number; bytes: number; close(): void } {
  const fd = openSync(file, 'r');
  const size = fstatSync(fd).size;
  const fn = (async (offset: number, length: number) => {
    fn.calls++;
    const n = Math.max(0, Math.min(length, size - offset));
    const buf = Buffer.alloc(n);
    if (n) readSync(fd, buf, 0, n, offset);
    fn.bytes += n;
    return buf;
  }) as unknown as ByteReader & { calls: number; bytes: number; close(): void };
  fn.calls = 0;
  fn.bytes = 0;
  fn.close = () => closeSync(fd);
  return fn;
}

/** Builds the source tree every image in this spec is populated from (mkfs -d, no mount). */
function makeTree(root: string): void {
  mkdirSync(path.join(root, 'etc/nested/a/b'), { recursive: true });
  mkdirSync(path.join(root, 'many'));
  writeFileSync(path.join(root, 'etc/hostname'), 'web01\n');
  chmodSync(path.join(root, 'etc/hostname'), 0o600);
  writeFileSync(path.join(root, 'etc/nested/a/b/deep.txt'), 'deep\n');
  chmodSync(path.join(root, 'etc/nested'), 0o750);
  writeFileSync(path.join(root, 'etc/tiny'), 'x');
  // Data every other 8 KiB over 1 MiB: dozens of extents (an extent tree of depth 1) and holes between.
  const frag = openSync(path.join(root, 'fragmented.bin'), 'w');
  for (let i = 0; i < 64; i++) {
    const chunk = Buffer.alloc(8192, (i % 250) + 1);
    chunk.write(`chunk ${i}`);
    execWrite(frag, chunk, i * 16384);
  }
  closeSync(frag);
  const sparse = openSync(path.join(root, 'sparse.bin'), 'w');
  execWrite(sparse, Buffer.alloc(5000, 0x41), 0);
  execWrite(sparse, Buffer.alloc(70000, 0x42), 3 << 20);
  execWrite(sparse, Buffer.alloc(1, 0x43), (9 << 20) - 1);
  closeSync(sparse);
  for (let i = 0; i < 300; i++) writeFileSync(path.join(root, `many/file-${String(i).padStart(4, '0')}.txt`), `n${i}\n`);
  symlinkSync('etc/hostname', path.join(root, 'short-link'));
  symlinkSync(`${'x'.repeat(100)}/target`, path.join(root, 'long-link'));
  symlinkSync('etc/nested/a', path.join(root, 'dir-link'));
  symlinkSync('/etc/./nested/../nested', path.join(root, 'etc/abs-dir-link'));
  symlinkSync('loop', path.join(root, 'loop'));
  utimesSync(path.join(root, 'etc/hostname'), 1700000000, 1600000000);
}

function execWrite(fd: number, data: Buffer, at: number): void {
  writeSync(fd, data, 0, data.length, at);
}

async function readAll(fs: FileSystem, p: string, size: number): Promise<Buffer> {
  const out = Buffer.alloc(size);
  for await (const c of fs.readFile(p)) out.set(c.data, c.offset);
  return out;
}

/** `debugfs -R "ls -p DIR"` as name → [inode, mode, uid, gid, size]. */
function debugfsList(debugfs: string, image: string, dir: string): Map<string, number[]> {
  const out = execFileSync(debugfs, ['-R', `ls -p ${dir}`, image], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const map = new Map<string, number[]>();
  for (const line of out.split('\n')) {
    const m = /^\/(\d+)\/(\d+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line.trim());
    if (!m || m[5] === '.' || m[5] === '..') continue;
    map.set(m[5]!, [Number(m[1]), parseInt(m[2]!, 8), Number(m[3]), Number(m[4]), Number(m[6] || 0)]);
  }
  return map;
}

describe('ext4 reader (images made by mkfs -d, checked against debugfs)', function () {
  this.timeout(60000);
  let dir: string;
  let src: string;
  const tools: Record<string, string> = {};

  before(function () {
    const missing: Record<string, string> = {};
    for (const t of ['mkfs.ext4', 'mkfs.ext2', 'mkfs.ext3', 'debugfs', 'e2fsck']) {
      const p = tool(t);
      if (p) tools[t] = p;
      else missing[t] = 'e2fsprogs';
    }
    skipForMissingTools(this, missing);
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-ext4-'));
    src = path.join(dir, 'src');
    makeTree(src);
  });
  after(() => dir && rmSync(dir, { recursive: true, force: true }));

  const variants: Array<[string, string, string[]]> = [
    ['ext4 (extents, htree, 4 KiB blocks)', 'mkfs.ext4', []],
    ['ext4 with 1 KiB blocks and 128-byte inodes', 'mkfs.ext4', ['-b', '1024', '-I', '128']],
    ['ext4 with 64bit and meta_bg', 'mkfs.ext4', ['-b', '1024', '-O', '64bit,meta_bg,^resize_inode']],
    ['ext4 with inline_data', 'mkfs.ext4', ['-O', 'inline_data']],
    ['ext3 (indirect block maps, journal)', 'mkfs.ext3', []],
    ['ext2 (indirect block maps)', 'mkfs.ext2', ['-b', '1024']],
  ];
  for (const [title, mkfs, opts] of variants) {
    it(`lists and reads ${title} like debugfs`, async function () {
      const image = path.join(dir, `${mkfs}-${opts.join('')}.img`);
      execFileSync(tools[mkfs]!, ['-q', '-F', ...opts, '-d', src, image, '64M'], { stdio: 'ignore' });
      // e2fsck -D indexes the big folder (htree) as a mounted kernel would.
      execFileSync(tools['e2fsck']!, ['-fyD', image], { stdio: 'ignore' });
      const read = fileReader(image);
      try {
        expect(await isExt4(read)).to.equal(true);
        const fs = await Ext4FileSystem.open(read);
        for (const d of ['/', '/etc', '/etc/nested/a/b', '/many']) {
          const expected = debugfsList(tools['debugfs']!, image, d);
          const got = await fs.list(d);
          expect(got.map((e) => e.name).sort()).to.deep.equal([...expected.keys()].sort(), d);
          for (const e of got) {
            const [ino, mode, uid, gid, size] = expected.get(e.name)!;
            expect([e.id, e.mode, e.uid, e.gid], `${d}/${e.name}`).to.deep.equal([ino, mode! & 0o7777, uid, gid]);
            if (e.type === 'file') expect(e.size).to.equal(size);
          }
        }
        for (const f of ['etc/hostname', 'etc/nested/a/b/deep.txt', 'etc/tiny', 'fragmented.bin', 'sparse.bin', 'many/file-0299.txt']) {
          const want = readFileSync(path.join(src, f));
          const st = await fs.stat(`/${f}`);
          expect(st.type).to.equal('file');
          expect(st.size).to.equal(want.length);
          expect((await readAll(fs, `/${f}`, st.size)).equals(want), f).to.equal(true);
          expect(Math.floor(st.mtimeMs / 1000)).to.equal(Math.floor(statSync(path.join(src, f)).mtimeMs / 1000));
        }
        expect((await fs.stat('/etc/hostname')).mode).to.equal(0o600);
        expect((await fs.stat('/etc/nested')).mode).to.equal(0o750);
        expect((await fs.stat('/etc/hostname')).mtimeMs).to.equal(1600000000 * 1000);
        expect(await fs.readLink('/short-link')).to.equal('etc/hostname');
        expect(await fs.readLink('/long-link')).to.equal(`${'x'.repeat(100)}/target`);
        // Links among the folders of a path are followed; the last one is not.
        expect((await fs.list('/dir-link/b')).map((e) => e.name)).to.deep.equal(['deep.txt']);
        expect((await fs.stat('/etc/abs-dir-link/a/b/deep.txt')).size).to.equal(5);
        expect((await fs.stat('/dir-link')).type).to.equal('symlink');
        const loop = await fs.stat('/loop/x').catch((e: unknown) => e);
        expect(isFerryError(loop, 'DISK_PATH_NOT_FOUND')).to.equal(true);
        // The sparse file's holes are not read: only its data comes back.
        let dataBytes = 0;
        for await (const c of fs.readFile('/sparse.bin')) dataBytes += c.data.length;
        expect(dataBytes).to.be.below(200_000);
      } finally {
        read.close();
      }
    });
  }

  it('reads nanosecond times from the extra inode fields', async function () {
    const image = path.join(dir, 'nanos.img');
    execFileSync(tools['mkfs.ext4']!, ['-q', '-F', '-d', src, image, '32M'], { stdio: 'ignore' });
    // 0x0ccccccc: epoch bits 0, nanoseconds 0x0ccccccc >> 2 = 53687091.
    execFileSync(tools['debugfs']!, ['-w', '-R', 'sif /etc/hostname mtime_extra 0x0ccccccd', image], { stdio: 'ignore' });
    const read = fileReader(image);
    try {
      const st = await (await Ext4FileSystem.open(read)).stat('/etc/hostname');
      // Low two bits (here 1) extend the seconds by 2^32.
      expect(st.mtimeMs).to.be.closeTo((1600000000 + 2 ** 32) * 1000 + 53.687091, 1e-3);
    } finally {
      read.close();
    }
  });

  for (const mkfs of ['mkfs.ext4', 'mkfs.ext3']) {
    it(`replays committed journal transactions (with a revoke) in memory, as e2fsck does on disk (${mkfs})`, async function () {
      const image = path.join(dir, `journal-${mkfs}.img`);
      execFileSync(tools[mkfs]!, ['-q', '-F', '-b', '4096', '-d', src, image, '32M'], { stdio: 'ignore' });
      const files = ['/etc/hostname', '/etc/nested/a/b/deep.txt', '/many/file-0001.txt'];
      const debugfs = (cmd: string, img = image): string =>
        execFileSync(tools['debugfs']!, ['-R', cmd, img], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
      const blocks = files.map((f) => debugfs(`bmap ${f} 0`).trim());
      const payload = path.join(dir, 'payload');
      writeFileSync(payload, Buffer.concat([Buffer.alloc(4096, 0x41), Buffer.alloc(4096, 0x42)]));
      // Three transactions: two blocks logged, then the second revoked, then a third block logged.
      const script = ['jo', `jw -b ${blocks[0]},${blocks[1]} ${payload}`, 'jc', 'jo', `jw -r ${blocks[1]}`, 'jc', 'jo', `jw -b ${blocks[2]} ${payload}`, 'jc'].join('\n');
      execFileSync(tools['debugfs']!, ['-w', '-f', '-', image], { input: script, stdio: ['pipe', 'ignore', 'ignore'] });
      const recovered = path.join(dir, `journal-${mkfs}-recovered.img`);
      writeFileSync(recovered, readFileSync(image));
      try {
        execFileSync(tools['e2fsck']!, ['-fy', recovered], { stdio: 'ignore' });
      } catch {
        /* exit 1: errors corrected (the journal was replayed) */
      }
      const contents = async (img: string, replayJournal: boolean): Promise<string[]> => {
        const read = fileReader(img);
        try {
          const fs = await Ext4FileSystem.open(read, { replayJournal });
          return await Promise.all(files.map(async (f) => (await readAll(fs, f, (await fs.stat(f)).size)).toString('latin1')));
        } finally {
          read.close();
        }
      };
      const want = await contents(recovered, false);
      expect(want).to.deep.equal(['AAAAAA', 'deep\n', 'AAA']);
      expect(await contents(image, false)).to.not.deep.equal(want);
      expect(await contents(image, true)).to.deep.equal(want);
      const read = fileReader(image);
      try {
        const fs = await Ext4FileSystem.open(read);
        expect(fs.info.journal).to.deep.include({ transactions: 3, blocks: 2 });
      } finally {
        read.close();
      }
    });
    }

    it('refuses an unknown incompatible feature and a path that is not there, with codes', async function () {
      const image = path.join(dir, 'feat.img');
      execFileSync(tools['mkfs.ext4']!, ['-q', '-F', image, '8M'], { stdio: 'ignore' });
      const read = fileReader(image);
      try {
        const fs = await Ext4FileSystem.open(read);
        const missing = await fs.stat('/nope').catch((e: unknown) => e);
        expect(isFerryError(missing, 'DISK_PATH_NOT_FOUND')).to.equal(true);
        const notDir = await fs.list('/lost+found/x').catch((e: unknown) => e);
        expect(isFerryError(notDir, 'DISK_PATH_NOT_FOUND')).to.equal(true);
      } finally {
        read.close();
      }
      // Set INCOMPAT bit 0x1000 (dirdata) in the superblock: this reader must refuse it, naming it.
      const buf = readFileSync(image);
      buf.writeUInt32LE(buf.readUInt32LE(1024 + 0x60) | 0x1000, 1024 + 0x60);
      writeFileSync(image, buf);
      const read2 = fileReader(image);
      try {
        const err = await Ext4FileSystem.open(read2).catch((e: unknown) => e);
        expect(isFerryError(err, 'DISK_FORMAT_UNSUPPORTED')).to.equal(true);
        expect(String(err)).to.contain('dirdata');
      } finally {
        read2.close();
      }
    });

    it('fails on damaged images with DISK_FORMAT_* codes only, never another error', async function () {
    const image = path.join(dir, 'fuzz.img');
    execFileSync(tools['mkfs.ext4']!, ['-q', '-F', '-b', '1024', '-d', src, image, '16M'], { stdio: 'ignore' });
    const pristine = readFileSync(image);
    let seed = 7;
    const rnd = (n: number): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * n;
    const deadline = Date.now() + 10_000;
    for (let iter = 0; iter < 60 && Date.now() < deadline; iter++) {
      const img = Buffer.from(pristine);
      // The first 600 KiB hold the superblock, descriptors, bitmaps, inode table and folders.
      for (let k = 0; k < 20; k++) img[Math.floor(rnd(600 * 1024))] = Math.floor(rnd(256));
      const read: ByteReader = async (offset, length) => {
        if (offset < 0 || offset + length > img.length) throw new FerryError('DISK_FORMAT_INVALID', 'past the end');
        return img.subarray(offset, offset + length);
      };
      const codes = (err: unknown): void => {
        if (!isFerryError(err) || !err.code.startsWith('DISK_')) throw err;
      };
      let visited = 0;
      const walk = async (fs: FileSystem, p: string, depth: number): Promise<void> => {
        if (depth > 6 || visited > 1000) return;
        for (const e of await fs.list(p)) {
          visited++;
          const child = p === '/' ? `/${e.name}` : `${p}/${e.name}`;
          try {
            if (e.type === 'dir') await walk(fs, child, depth + 1);
            else if (e.type === 'file') for await (const c of fs.readFile(child)) void c;
            else if (e.type === 'symlink') await fs.readLink(child);
          } catch (err) {
            codes(err);
          }
        }
      };
      try {
        await walk(await Ext4FileSystem.open(read), '/', 0);
      } catch (err) {
        codes(err);
      }
    }
  });

  it('reads only the blocks it needs for one small file', async function () {
      const image = path.join(dir, 'count.img');
      execFileSync(tools['mkfs.ext4']!, ['-q', '-F', '-d', src, image, '64M'], { stdio: 'ignore' });
      const read = fileReader(image);
      try {
        const fs = await Ext4FileSystem.open(read);
        await readAll(fs, '/etc/nested/a/b/deep.txt', 5);
        expect(read.bytes).to.be.below(64 * 1024);
      } finally {
        read.close();
      }
    });
  });
