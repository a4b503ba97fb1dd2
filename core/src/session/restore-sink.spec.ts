import { expect } from 'chai';
import { mkdtempSync, promises as fsp, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
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
  });
});
