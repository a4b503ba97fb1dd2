import assert from 'node:assert/strict';
import type { Compressor } from '../contracts/compressor.js';
import { skipBecause } from './test-skips.js';
import { Prng } from './vm-image.js';

/** Stands in for a compressor that cannot be built here (e.g. a native addon): every case skips. */
export interface UnavailableCompressor {
  unavailable: string;
}

/**
 * The conformance suite every compressor runs (in-tree and third-party): round trips, determinism,
 * a real shrink on text, and refusal of a wrong length or damaged input (the contract's invariants).
 * Given `{ unavailable: why }` instead of a compressor, every case is registered and skipped, so the
 * closing line counts each of them.
 */
export function runCompressorConformance(name: string, subject: Compressor | UnavailableCompressor, level = 3): void {
  describe(`compressor conformance: ${name}`, function () {
    const unavailable = 'unavailable' in subject ? subject.unavailable : undefined;
    const compressor: Compressor = 'unavailable' in subject ? NONE : subject;
    before(function () {
      if (unavailable) skipBecause(this, `${name}: ${unavailable}`);
    });
    const rng = new Prng(12);
    const inputs: Record<string, Buffer> = {
      empty: Buffer.alloc(0),
      zeros: Buffer.alloc(1 << 20),
      random: rng.fill(Buffer.alloc(256 * 1024)),
      text: Buffer.from('ferry moves blocks between data movers\n'.repeat(20000)),
    };
    for (const [what, input] of Object.entries(inputs)) {
      it(`round-trips ${what} input deterministically`, function () {
        const a = compressor.compress(input, level);
        assert.ok(Buffer.from(compressor.compress(input, level)).equals(Buffer.from(a)));
        assert.ok(Buffer.from(compressor.decompress(a, input.length)).equals(input));
      });
    }
    // Optional methods: the case is always registered, and skipped (and counted) when not offered.
    it('compressInto writes exactly what compress returns, or 0 when that would not shrink the input or fit', function () {
      if (!compressor.compressInto) skipBecause(this, `${name} offers no compressInto`);
      const into = compressor.compressInto.bind(compressor);
      for (const [what, input] of Object.entries(inputs)) {
        const c = Buffer.from(compressor.compress(input, level));
        const out = Buffer.alloc(input.length + 64, 0xa5);
        const n = into(input, level, out.subarray(0, input.length));
        if (c.length >= input.length) assert.equal(n, 0, `${what}: compress did not shrink it, compressInto wrote ${n} bytes`);
        else assert.ok(out.subarray(0, n).equals(c), `${what}: compressInto wrote other bytes than compress (${n} vs ${c.length})`);
        assert.equal(out[input.length], 0xa5, `${what}: compressInto wrote past the end of out`);
        if (c.length > 8 && c.length < input.length) assert.equal(into(input, level, Buffer.alloc(c.length - 1)), 0, `${what}: an out one byte too small`);
      }
    });
    it('decompressInto writes what decompress returns into the caller\'s memory, and refuses damaged input', function () {
      if (!compressor.decompressInto) skipBecause(this, `${name} offers no decompressInto`);
      const into = compressor.decompressInto.bind(compressor);
      for (const [what, input] of Object.entries(inputs)) {
        const a = compressor.compress(input, level);
        const out = Buffer.alloc(input.length + 16, 0xa5);
        into(a, input.length, out);
        assert.ok(out.subarray(0, input.length).equals(input), `${what}: decompressInto wrote other bytes`);
        assert.equal(out[input.length], 0xa5, `${what}: decompressInto wrote past rawLength`);
      }
      const a = compressor.compress(inputs.text, level);
      const bad = Buffer.from(a);
      bad.fill(0xff, 4, 40);
      assert.throws(() => into(bad, inputs.text.length, Buffer.alloc(inputs.text.length)));
      assert.throws(() => into(a, inputs.text.length - 1, Buffer.alloc(inputs.text.length)));
    });
    it('shrinks text and refuses a wrong length or damaged input', function () {
      const a = compressor.compress(inputs.text, level);
      assert.ok(a.length < inputs.text.length / 10, `text compressed to ${a.length} bytes`);
      assert.throws(() => compressor.decompress(a, inputs.text.length - 1));
      const bad = Buffer.from(a);
      bad.fill(0xff, 4, 40);
      assert.throws(() => compressor.decompress(bad, inputs.text.length));
    });
  });
}

const NONE: Compressor = {
  compress: () => {
    throw new Error('no compressor: the case should have been skipped');
  },
  decompress: () => {
    throw new Error('no compressor: the case should have been skipped');
  },
};
