import { expect } from 'chai';
import { closeSync, constants as fsConstants, existsSync, mkdtempSync, openSync, promises as fsp, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AlignedArena } from '../util/aligned-memory.js';
import { dataRanges, fileSink, MIN_HOLE } from './restore-sink.js';

const KiB = 1024;

/** A block of `length` bytes, non-zero except in the given [start, end) ranges. */
function block(length: number, zeros: [number, number][]): Buffer {
  const b = Buffer.alloc(length, 0x5a);
  for (const [a, z] of zeros) b.fill(0, a, z);
  return b;
}

describe('restore sinks: zero runs inside data blocks', function () {
  it('dataRanges keeps zero runs shorter than MIN_HOLE and splits at longer ones, at page granularity', function () {
    const M = 1024 * KiB;
    expect(dataRanges(block(M, []))).to.deep.equal([[0, M]]);
    expect(dataRanges(Buffer.alloc(M))).to.deep.equal([]);
    // 60 KiB of zeros: written with the data around it
    expect(dataRanges(block(M, [[100 * KiB, 160 * KiB]]))).to.deep.equal([[0, M]]);
    // 64 KiB (MIN_HOLE) in the middle, at the start and at the end
    expect(dataRanges(block(M, [[128 * KiB, 128 * KiB + MIN_HOLE]]))).to.deep.equal([
      [0, 128 * KiB],
      [128 * KiB + MIN_HOLE, M],
    ]);
    expect(dataRanges(block(M, [[0, 256 * KiB]]))).to.deep.equal([[256 * KiB, M]]);
    expect(dataRanges(block(M, [[M - 512 * KiB, M]]))).to.deep.equal([[0, M - 512 * KiB]]);
    // a run that does not cover whole pages: only its whole pages count
    expect(dataRanges(block(M, [[4 * KiB + 1, 4 * KiB + 1 + MIN_HOLE]]))).to.deep.equal([[0, M]]);
    // a single non-zero byte at the end of a page keeps that page
    const b = Buffer.alloc(M);
    b[512 * KiB - 1] = 1;
    expect(dataRanges(b)).to.deep.equal([[508 * KiB, 512 * KiB]]);
    // a short last block (not a multiple of the page size)
    const short = block(300 * KiB + 100, [[0, 200 * KiB]]);
    expect(dataRanges(short)).to.deep.equal([[200 * KiB, 300 * KiB + 100]]);
  });

  describe('fileSink.writeFresh', function () {
    let dir: string;
    beforeEach(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-sink-spec-'))));
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    it('makes a file it created durable with its folder entry (fsync of the file, then of the folder)', async function () {
      const synced: string[] = [];
      const open = fsp.open;
      fsp.open = (async (p: string, flags?: string) => {
        const fh = await open(p, flags);
        const sync = fh.sync.bind(fh);
        fh.sync = async () => (await sync(), void synced.push(path.relative(dir, p) || '.'));
        return fh;
      }) as typeof fsp.open;
      try {
        const sink = await fileSink(path.join(dir, 'new.raw'), 8192, 'd');
        await sink.writeFresh(0, Buffer.alloc(4096, 1));
        await sink.finish(true);
        expect(synced).to.deep.equal(['new.raw', '.']);
        // an existing file overwritten with --force keeps its entry: the file's fsync is enough
        synced.length = 0;
        writeFileSync(path.join(dir, 'old.raw'), 'x');
        const forced = await fileSink(path.join(dir, 'old.raw'), 8192, 'd', { force: true });
        await forced.finish(true);
        expect(synced).to.deep.equal(['old.raw']);
      } finally {
        fsp.open = open;
      }
    });

    it('leaves long zero runs of a block as holes in a new file and restores the same bytes', async function () {
      const to = path.join(dir, 'disk.raw');
      const size = 4 * 1024 * KiB;
      const sink = await fileSink(to, size, 'disk.raw');
      const a = block(1024 * KiB, [[256 * KiB, 768 * KiB]]);
      const b = block(1024 * KiB, []);
      await sink.writeFresh(0, a);
      await sink.writeFresh(2 * 1024 * KiB, b);
      expect(await sink.finish(true)).to.equal(undefined);
      const out = readFileSync(to);
      expect(out.subarray(0, 1024 * KiB).equals(a)).to.equal(true);
      expect(out.subarray(2 * 1024 * KiB, 3 * 1024 * KiB).equals(b)).to.equal(true);
      expect(out.subarray(1024 * KiB, 2 * 1024 * KiB).equals(Buffer.alloc(1024 * KiB))).to.equal(true);
      // 512 KiB of `a` and all of `b` are data; a filesystem without holes would hold all 4 MiB
      const allocated = statSync(to).blocks * 512;
      if (allocated < size) expect(allocated).to.be.at.most(1536 * KiB + 64 * KiB);
    });

    describe('direct writes (O_DIRECT)', function () {
      const O_DIRECT = (fsConstants.O_DIRECT as number | undefined) ?? 0;
      /** Open descriptors of `file` in this process with O_DIRECT set (from /proc/self/fdinfo). */
      const directFds = (file: string): number => {
        let n = 0;
        for (const fd of readdirSync('/proc/self/fd')) {
          try {
            if (readlinkSync(`/proc/self/fd/${fd}`) !== file) continue;
            const flags = parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
            if (flags & O_DIRECT) n++;
          } catch {
            // closed meanwhile
          }
        }
        return n;
      };
      beforeEach(function () {
        if (!O_DIRECT || !existsSync('/proc/self/fdinfo')) this.skip();
        // A file system without direct I/O (tmpfs before Linux 6.6): the sink writes through the page cache only.
        try {
          const probe = path.join(dir, 'probe');
          closeSync(openSync(probe, fsConstants.O_WRONLY | fsConstants.O_CREAT | O_DIRECT));
          rmSync(probe);
        } catch {
          this.skip();
        }
      });

      it('writes whole pages from page-aligned memory directly, a short tail through the page cache: the same bytes', async function () {
        const to = path.join(dir, 'disk.raw');
        const size = 2 * 1024 * KiB + 5000; // the last block ends inside a page
        const sink = await fileSink(to, size, 'disk.raw');
        expect(directFds(to)).to.equal(1);
        const arena = new AlignedArena();
        const a = arena.take(1024 * KiB).view;
        a.set(block(1024 * KiB, [[128 * KiB, 512 * KiB]]));
        const tail = arena.take(5000).view;
        tail.set(block(5000, []));
        await sink.writeFresh(1024 * KiB, a);
        await sink.writeFresh(2 * 1024 * KiB, tail);
        expect(directFds(to), 'direct writes still on').to.equal(1);
        expect(await sink.finish(true)).to.equal(undefined);
        expect(directFds(to)).to.equal(0);
        const out = readFileSync(to);
        expect(out.length).to.equal(size);
        expect(out.subarray(0, 1024 * KiB).equals(Buffer.alloc(1024 * KiB))).to.equal(true);
        expect(out.subarray(1024 * KiB, 2048 * KiB).equals(a)).to.equal(true);
        expect(out.subarray(2048 * KiB).equals(tail)).to.equal(true);
      });

      it('turns direct writes off at the first one the kernel refuses (memory not aligned) and writes every byte through the page cache', async function () {
        const to = path.join(dir, 'disk.raw');
        const size = 3 * 1024 * KiB;
        const sink = await fileSink(to, size, 'disk.raw');
        // One byte past a 16-byte boundary: never aligned as a device needs (512 bytes or more).
        const odd = Buffer.alloc(1024 * KiB + 16).subarray(1, 1024 * KiB + 1);
        odd.set(block(1024 * KiB, [[0, 256 * KiB]]));
        await sink.writeFresh(0, odd);
        expect(directFds(to), 'refused: direct writes off').to.equal(0);
        const a = new AlignedArena().take(1024 * KiB).view;
        a.set(block(1024 * KiB, []));
        await sink.writeFresh(2 * 1024 * KiB, a);
        expect(await sink.finish(true)).to.equal(undefined);
        const out = readFileSync(to);
        expect(out.subarray(0, 1024 * KiB).equals(odd)).to.equal(true);
        expect(out.subarray(1024 * KiB, 2048 * KiB).equals(Buffer.alloc(1024 * KiB))).to.equal(true);
        expect(out.subarray(2048 * KiB).equals(a)).to.equal(true);
      });
    });
  });
});
