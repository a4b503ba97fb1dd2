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

  it('refuses damage with the object named', function () {
    const enc = new BlockMap(4096 * 3, 4096).encode();
    enc[40] ^= 1;
    expect(() => BlockMap.decode(enc, 'points/vm/x/disk-0.map')).to.throw(FerryError, /disk-0\.map/);
  });
});
