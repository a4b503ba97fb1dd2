import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { DeflateCompressor } from '../compression/deflate-compressor.js';
import { decodeBlock, encodeBlock, parseBlock } from './block-object.js';

describe('block objects', function () {
  const deflate = new DeflateCompressor();
  const lookup = (n: string) => (n === 'deflate' ? deflate : undefined);
  const raw = Buffer.from('ferry '.repeat(5000));

  it('round-trips a compressed block', function () {
    const enc = encodeBlock('deflate', raw.length, deflate.compress(raw, 1));
    expect(parseBlock(enc, 'k')).to.include({ compressor: 'deflate', rawLength: raw.length });
    expect(Buffer.from(decodeBlock(enc, 'k', lookup)).equals(raw)).to.equal(true);
  });

  it('detects any flipped bit with its CRC-32 and names the object', function () {
    const enc = encodeBlock('deflate', raw.length, deflate.compress(raw, 1));
    for (const pos of [4, 8, 9, 12, 20, enc.length - 1]) {
      const bad = Buffer.from(enc);
      bad[pos] ^= 0x10;
      expect(() => parseBlock(bad, 'blocks/aa/aabb'), `bit at ${pos}`).to.throw(FerryError, /blocks\/aa\/aabb/);
    }
  });

  it('refuses a truncated object', function () {
    const enc = encodeBlock('deflate', raw.length, deflate.compress(raw, 1));
    expect(() => parseBlock(enc.subarray(0, enc.length - 3), 'k')).to.throw(FerryError, /CRC/);
    expect(() => parseBlock(enc.subarray(0, 6), 'k')).to.throw(FerryError, /header/);
  });

  it('names an unknown compressor instead of guessing', function () {
    const enc = encodeBlock('zstd', 3, Buffer.from('abc'));
    expect(() => decodeBlock(enc, 'k', lookup)).to.throw(FerryError, /zstd/);
  });
});
