import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { BlockIndex, RUN_ENTRY } from './block-index.js';

interface Ref {
  pack: string;
  offset: number;
  length: number;
}

function check(index: BlockIndex, ref: Map<string, Ref>): void {
  expect(index.size).to.equal(ref.size);
  for (const [h, want] of ref) expect(index.get(Buffer.from(h, 'hex')), h).to.deep.equal(want);
}

describe('BlockIndex', function () {
  it('finds every bulk-loaded and added block, and nothing else, across merges', function () {
    const index = new BlockIndex();
    const ref = new Map<string, Ref>();
    const put = (bulk: boolean): void => {
      const h = randomBytes(32);
      // Shared prefixes (and, for a few, shared third bytes) so the in-slice sorts have work to do.
      if (ref.size % 3 === 0) h[0] = h[1] = 7;
      if (ref.size % 1000 === 0) h[2] = 9;
      const pack = `p${ref.size % 97}`;
      const loc = { pack, offset: 8 + (ref.size % 1000) * 4096, length: 100 + (ref.size % 5000) };
      ref.set(h.toString('hex'), loc);
      if (bulk) index.stage(h, index.packNumber(pack), loc.offset, loc.length);
      else index.add(h, index.packNumber(pack), loc.offset, loc.length);
    };
    for (let i = 0; i < 30_000; i++) put(true);
    index.finishLoad();
    check(index, ref);
    // Enough adds to merge the delta into the run more than once.
    for (let i = 0; i < 150_000; i++) put(false);
    check(index, ref);
    for (let i = 0; i < 20; i++) {
      const h = randomBytes(32);
      expect(index.get(h)).to.equal(undefined);
      expect(index.packOf(h)).to.equal(-1);
    }
    index.finishLoad();
    check(index, ref);
    expect(index.bytes / index.size).to.be.below(RUN_ENTRY + 4);
  });

  it('keeps the first copy of a hash unless the preference says the new one is better', function () {
    const damaged = new Set<number>();
    const index = new BlockIndex((_hash, kept, cand) => damaged.has(kept) && !damaged.has(cand));
    const a = randomBytes(32);
    const b = randomBytes(32);
    const [p1, p2, p3] = [index.packNumber('one'), index.packNumber('two'), index.packNumber('three')];
    damaged.add(p1);
    index.stage(a, p1, 8, 10);
    index.stage(a, p2, 16, 10);
    index.stage(b, p2, 8, 10);
    index.stage(b, p3, 8, 10);
    index.finishLoad();
    expect(index.get(a)).to.deep.equal({ pack: 'two', offset: 16, length: 10 });
    expect(index.get(b)).to.deep.equal({ pack: 'two', offset: 8, length: 10 });
    index.add(b, p3, 99, 1);
    expect(index.get(b)?.pack).to.equal('two');
    damaged.add(p2);
    index.add(b, p3, 99, 1);
    expect(index.get(b)).to.deep.equal({ pack: 'three', offset: 99, length: 1 });
    expect(index.size).to.equal(2);
  });

  it('keeps locations whose fields do not fit the run (large offsets and records)', function () {
    const index = new BlockIndex();
    const h = randomBytes(32);
    const g = randomBytes(32);
    index.stage(h, index.packNumber('big'), 2 ** 33, 20 * 1024 * 1024);
    index.stage(g, index.packNumber('small'), 0xffffffff, 0xfffffe);
    index.finishLoad();
    expect(index.get(h)).to.deep.equal({ pack: 'big', offset: 2 ** 33, length: 20 * 1024 * 1024 });
    expect(index.get(g)).to.deep.equal({ pack: 'small', offset: 0xffffffff, length: 0xfffffe });
    expect(index.packOf(h)).to.equal(index.packNumber('big'));
    expect(index.overflowCount).to.equal(1);
  });

  it('exports its run and imports it into an empty index', function () {
    const a = new BlockIndex();
    const ref = new Map<string, Ref>();
    for (let i = 0; i < 5000; i++) {
      const h = randomBytes(32);
      ref.set(h.toString('hex'), { pack: `p${i % 7}`, offset: i, length: i + 1 });
      a.stage(h, a.packNumber(`p${i % 7}`), i, i + 1);
    }
    const { run, prefix, packs } = a.exportRun();
    const b = new BlockIndex();
    b.importRun(Uint8Array.from(run), Uint32Array.from(prefix), [...packs]);
    check(b, ref);
  });
});
