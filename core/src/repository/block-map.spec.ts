import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import { BlockMap } from './block-map.js';

describe('block maps', function () {
  it('round-trips entries, zero blocks and a short last block', function () {
    const m = new BlockMap(10 * 1024 * 1024 + 5, 1024 * 1024);
    expect(m.blockCount).to.equal(11);
    expect(m.lengthOf(10)).to.equal(5);
    m.set(0, sha256(Buffer.from('a')));
    m.set(10, sha256(Buffer.from('b')));
    const back = BlockMap.decode(m.encode(), 'map');
    expect(back.diskSize).to.equal(m.diskSize);
    expect(back.get(0)?.equals(sha256(Buffer.from('a')))).to.equal(true);
    expect(back.get(1)).to.equal(undefined);
    expect(back.get(10)?.equals(sha256(Buffer.from('b')))).to.equal(true);
  });

  it('sets and copies runs of entries, and measures a run up to the short last block', function () {
    const m = new BlockMap(10 * 1024 * 1024 + 5, 1024 * 1024);
    const base = new BlockMap(m.diskSize, m.blockSize);
    for (let i = 0; i < 11; i++) {
      m.set(i, sha256(Buffer.from(`m${i}`)));
      base.set(i, sha256(Buffer.from(`b${i}`)));
    }
    m.setZero(2, 3);
    m.copyEntry(base, 7, 4);
    const want = (i: number): Buffer | undefined => (i >= 2 && i < 5 ? undefined : sha256(Buffer.from(`${i >= 7 ? 'b' : 'm'}${i}`)));
    for (let i = 0; i < 11; i++) expect(m.get(i)?.toString('hex'), `entry ${i}`).to.equal(want(i)?.toString('hex'));
    expect(m.lengthOf(8, 3)).to.equal(2 * 1024 * 1024 + 5);
    expect(m.lengthOf(0, 11)).to.equal(m.diskSize);
    expect(m.lengthOf(3, 2)).to.equal(2 * 1024 * 1024);
  });

  it('refuses damage with the object named', function () {
    const enc = new BlockMap(4096 * 3, 4096).encode();
    enc[40] ^= 1;
    expect(() => BlockMap.decode(enc, 'points/vm/x/disk-0.map')).to.throw(FerryError, /disk-0\.map/);
  });
});
