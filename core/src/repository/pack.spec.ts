import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import { encodeBlock } from './block-object.js';
import { decodeIndex, encodeIndex, readPackTrailer, sealPack } from './pack.js';

describe('pack files and index objects', function () {
  const blocks = ['alpha', 'beta', 'gamma'].map((w) => {
    const raw = Buffer.from(w.repeat(1000));
    return { hash: sha256(raw), encoded: encodeBlock('none', raw.length, raw) };
  });

  it('a sealed pack lists every block at its offset, and its id is its SHA-256', function () {
    const pack = sealPack(blocks);
    expect(pack.id).to.equal(sha256(pack.bytes).toString('hex'));
    const entries = readPackTrailer(pack.bytes, 'p');
    expect(entries.map((e) => e.hash.toString('hex'))).to.deep.equal(blocks.map((b) => b.hash.toString('hex')));
    for (const [i, e] of entries.entries()) expect(pack.bytes.subarray(e.offset, e.offset + e.length).equals(blocks[i].encoded)).to.equal(true);
  });

  it('index objects round-trip and refuse damage', function () {
    const pack = sealPack(blocks);
    const idx = encodeIndex(pack.id, pack.entries);
    const back = decodeIndex(idx, 'i');
    expect(back.packId).to.equal(pack.id);
    expect(back.entries).to.deep.equal(pack.entries);
    const bad = Buffer.from(idx);
    bad[60] ^= 4;
    expect(() => decodeIndex(bad, 'index/ab/abc')).to.throw(FerryError, /index\/ab\/abc/);
  });

  it('a damaged or truncated trailer is refused, naming the pack', function () {
    const pack = sealPack(blocks);
    const bad = Buffer.from(pack.bytes);
    bad[bad.length - 20] ^= 1;
    expect(() => readPackTrailer(bad, 'packs/aa/x')).to.throw(FerryError, /packs\/aa\/x/);
    expect(() => readPackTrailer(pack.bytes.subarray(0, 12), 'p')).to.throw(FerryError);
  });
});
