import { expect } from 'chai';
import { Prng } from '@ferry/core/testing';
import { ZstdCompressor } from './index.js';

describe('zstd compressor', function () {
  const c = new ZstdCompressor();
  const rng = new Prng(12);
  const inputs = {
    empty: Buffer.alloc(0),
    zeros: Buffer.alloc(1 << 20),
    random: rng.fill(Buffer.alloc(256 * 1024)),
    text: Buffer.from('ferry moves blocks between data movers\n'.repeat(20000)),
  };
  for (const [name, input] of Object.entries(inputs)) {
    it(`round-trips ${name} input deterministically`, function () {
      const a = c.compress(input, 3);
      expect(Buffer.from(c.compress(input, 3)).equals(Buffer.from(a))).to.equal(true);
      expect(Buffer.from(c.decompress(a, input.length)).equals(input)).to.equal(true);
    });
  }
  it('shrinks text and refuses a wrong length or damaged input', function () {
    const a = c.compress(inputs.text, 3);
    expect(a.length).to.be.lessThan(inputs.text.length / 10);
    expect(() => c.decompress(a, inputs.text.length - 1)).to.throw();
    const bad = Buffer.from(a);
    bad.fill(0xff, 4, 40);
    expect(() => c.decompress(bad, inputs.text.length)).to.throw();
  });
});
