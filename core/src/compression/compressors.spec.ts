import { expect } from 'chai';
import { Prng } from '../testing/vm-image.js';
import { DeflateCompressor } from './deflate-compressor.js';
import { NoneCompressor } from './none-compressor.js';
import { RleCompressor } from './rle-compressor.js';

describe('built-in compressors', function () {
  const rng = new Prng(4);
  const inputs: Record<string, Buffer> = {
    empty: Buffer.alloc(0),
    zeros: Buffer.alloc(70000),
    random: rng.fill(Buffer.alloc(65536)),
    text: Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(3000)),
    runs: Buffer.concat([Buffer.alloc(1, 1), Buffer.alloc(2, 2), Buffer.alloc(3, 3), Buffer.alloc(131, 4), Buffer.alloc(129, 5), rng.fill(Buffer.alloc(300))]),
  };
  for (const [name, c] of [['none', new NoneCompressor()], ['rle', new RleCompressor()], ['deflate', new DeflateCompressor()]] as const) {
    for (const [what, input] of Object.entries(inputs)) {
      it(`${name} round-trips ${what} input and is deterministic`, function () {
        const a = c.compress(input, 6);
        expect(Buffer.from(c.compress(input, 6)).equals(Buffer.from(a))).to.equal(true);
        expect(Buffer.from(c.decompress(a, input.length)).equals(input)).to.equal(true);
      });
    }
    it(`${name} refuses output of the wrong length`, function () {
      const a = c.compress(inputs.text, 6);
      expect(() => c.decompress(a, inputs.text.length + 1)).to.throw();
    });
  }

  it('rle shrinks runs and stays near the input size on random data', function () {
    const rle = new RleCompressor();
    expect(rle.compress(inputs.zeros).length).to.be.lessThan(1200);
    expect(rle.compress(inputs.random).length).to.be.at.most(inputs.random.length + Math.ceil(inputs.random.length / 128));
  });
});
