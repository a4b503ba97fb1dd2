import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { MAX_BLOCK_SIZE } from '@ferry/core/limits';
// Internal: the spec checks a damaged lz4 payload through the core's block decoder.
import { decodeBlock, encodeBlock } from '@ferry/core';
import { runCompressorConformance, skipBecause } from '@ferry/core/testing';
import { Lz4Compressor, lz4Napi } from './index.js';
import { loadLz4Addon } from './lz4-addon.js';

const addon = loadLz4Addon();
const NO_ADDON = 'the ferry_lz4 addon did not load (build/Release/ferry_lz4.node, built at npm install)';

runCompressorConformance('lz4 (default implementation)', new Lz4Compressor());
runCompressorConformance('lz4 (lz4-napi fallback)', new Lz4Compressor(null));
runCompressorConformance('lz4 (liblz4 addon)', addon ? new Lz4Compressor(addon) : { unavailable: NO_ADDON });

/** Deterministic pseudo-random bytes (xorshift), so a failure reproduces. */
function prng(n: number, seed: number): Buffer {
  const out = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** Text-like: words from a small vocabulary with numbers, the way logs and configs compress. */
function textLike(n: number): Buffer {
  const words = ['ferry', 'block', 'backup', 'restore', 'disk', 'snapshot', 'INFO', 'WARN', '\n', 'repository', '=', '{', '}'];
  const r = prng(n, 7);
  let s = '';
  for (let i = 0; s.length < n; i++) s += words[r[i % n] % words.length] + (r[(i * 7) % n] % 3 === 0 ? String(i) : ' ');
  return Buffer.from(s.slice(0, n), 'latin1');
}

const samples: [string, Buffer][] = [
  ['empty', Buffer.alloc(0)],
  ['one byte', Buffer.from([42])],
  ['zero 1 MiB', Buffer.alloc(1024 * 1024)],
  ['text-like 1 MiB', textLike(1024 * 1024)],
  ['random-but-repetitive 256 KiB', Buffer.concat(Array.from({ length: 64 }, (_, i) => prng(4096, 1 + (i % 5))))],
  ['incompressible 1 MiB', randomBytes(1024 * 1024)],
  ['incompressible 8 MiB (the block size limit)', randomBytes(MAX_BLOCK_SIZE)],
];

describe('lz4 compressor implementations', () => {
  it('has the liblz4 addon on this machine (built at npm install) and uses it by default', function () {
    if (!addon) skipBecause(this, `${NO_ADDON}: the liblz4 half of this suite is skipped`);
    expect(addon!.version).to.match(/^1\.\d+\.\d+$/);
    const c = new Lz4Compressor();
    expect(c.implementation).to.equal('liblz4');
    expect(c.describe()).to.equal(`liblz4 ${addon!.version} (ferry_lz4 addon)`);
  });

  it('uses lz4-napi when the environment says FERRY_LZ4=lz4-napi', () => {
    const before = process.env.FERRY_LZ4;
    process.env.FERRY_LZ4 = 'lz4-napi';
    try {
      const c = new Lz4Compressor();
      expect([c.implementation, c.describe()]).to.deep.equal(['lz4-napi', 'lz4-napi (FERRY_LZ4=lz4-napi)']);
    } finally {
      if (before === undefined) delete process.env.FERRY_LZ4;
      else process.env.FERRY_LZ4 = before;
    }
  });

  it('falls back to lz4-napi and says so', () => {
    const c = new Lz4Compressor(null);
    expect(c.implementation).to.equal('lz4-napi');
    expect(c.describe()).to.contain('lz4-napi');
  });

  describe('byte format (4-byte little-endian length, then one LZ4 block)', () => {
    for (const [name, data] of samples) {
      it(`cross-decodes a ${name} block both ways`, function () {
        if (!addon) skipBecause(this, NO_ADDON);
        const viaAddon = addon!.compress(data);
        const viaNapi = lz4Napi().compressSync(data);
        for (const enc of [viaAddon, viaNapi]) {
          expect(enc.readUInt32LE(0)).to.equal(data.length);
          expect(enc.length).to.be.at.least(5);
        }
        // addon -> lz4-napi, lz4-napi -> addon, and each with itself through the compressor class.
        expect(lz4Napi().uncompressSync(viaAddon).equals(data)).to.equal(true);
        expect(addon!.decompress(viaNapi, data.length, MAX_BLOCK_SIZE).equals(data)).to.equal(true);
        expect(Buffer.from(new Lz4Compressor(null).decompress(viaAddon, data.length)).equals(data)).to.equal(true);
        expect(Buffer.from(new Lz4Compressor(addon!).decompress(viaNapi, data.length)).equals(data)).to.equal(true);
      });
    }

    it('returns a view no longer than the compressed block, and the same bytes for the same input', function () {
      if (!addon) skipBecause(this, NO_ADDON);
      const data = textLike(1024 * 1024);
      const a = addon!.compress(data);
      expect(Buffer.isBuffer(a)).to.equal(true);
      expect(a.length).to.be.below(data.length / 2);
      expect(a.equals(addon!.compress(data))).to.equal(true);
    });

    it('accepts a Uint8Array view into a larger buffer', function () {
      if (!addon) skipBecause(this, NO_ADDON);
      const whole = textLike(300_000);
      const view = new Uint8Array(whole.buffer, whole.byteOffset + 1000, 200_000);
      const enc = addon!.compress(view);
      expect(lz4Napi().uncompressSync(enc).equals(Buffer.from(view))).to.equal(true);
    });

    it('rejects arguments of the wrong type with a TypeError', function () {
      if (!addon) skipBecause(this, NO_ADDON);
      expect(() => addon!.compress('text' as unknown as Uint8Array)).to.throw(TypeError);
      expect(() => addon!.decompress(Buffer.alloc(8), -1, MAX_BLOCK_SIZE)).to.throw(TypeError);
      expect(() => (addon!.decompress as (d: Uint8Array) => Buffer)(Buffer.alloc(8))).to.throw(TypeError);
    });
  });

  const impls: [string, () => Lz4Compressor | undefined][] = [
    ['liblz4 addon', () => (addon ? new Lz4Compressor(addon) : undefined)],
    ['lz4-napi fallback', () => new Lz4Compressor(null)],
  ];
  for (const [label, make] of impls) {
    describe(`damaged input (${label})`, () => {
      const data = textLike(256 * 1024);
      const good = Buffer.from(lz4Napi().compressSync(data));
      function rejects(c: Lz4Compressor, enc: Uint8Array, rawLength: number, code: string): void {
        let thrown: unknown;
        try {
          c.decompress(enc, rawLength);
        } catch (err) {
          thrown = err;
        }
        expect(thrown, 'decompress must throw').to.be.instanceOf(Error);
        expect((thrown as { code?: string }).code).to.equal(code);
      }

      it('rejects input shorter than the prefix (LZ4_TRUNCATED)', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        rejects(c, good.subarray(0, 3), data.length, 'LZ4_TRUNCATED');
        rejects(c, Buffer.alloc(0), 0, 'LZ4_TRUNCATED');
      });

      it('rejects a block cut short (LZ4_CORRUPT)', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        rejects(c, good.subarray(0, good.length - 10), data.length, 'LZ4_CORRUPT');
        rejects(c, good.subarray(0, 4), data.length, 'LZ4_CORRUPT');
      });

      it('rejects a prefix that disagrees with the block map (LZ4_LENGTH_MISMATCH)', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        rejects(c, good, data.length - 1, 'LZ4_LENGTH_MISMATCH');
        rejects(c, good, data.length + 1, 'LZ4_LENGTH_MISMATCH');
      });

      it('rejects a declared length above the block size limit before allocating (LZ4_TOO_LARGE)', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        const huge = Buffer.from(good);
        huge.writeUInt32LE(0xffffffff, 0);
        rejects(c, huge, 0xffffffff, 'LZ4_TOO_LARGE');
        huge.writeUInt32LE(MAX_BLOCK_SIZE + 1, 0);
        rejects(c, huge, MAX_BLOCK_SIZE + 1, 'LZ4_TOO_LARGE');
      });

      it('rejects a block that decodes to fewer bytes than declared (LZ4_CORRUPT)', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        const short = Buffer.from(lz4Napi().compressSync(data.subarray(0, 1000)));
        short.writeUInt32LE(2000, 0);
        rejects(c, short, 2000, 'LZ4_CORRUPT');
      });

      it('never crashes on 300 random single-byte corruptions; detected ones fail as REPO_CORRUPT_OBJECT naming the block', function () {
        const c = make() ?? skipBecause(this, NO_ADDON);
        const object = 'blocks/ab/cdef';
        const r = prng(900, 99);
        let rejected = 0;
        for (let i = 0; i < 300; i++) {
          const bad = Buffer.from(good);
          const at = 4 + (((r[3 * i] << 16) | (r[3 * i + 1] << 8) | r[3 * i + 2]) % (good.length - 4));
          bad[at] ^= 1 + (r[(i * 5) % 900] % 255);
          let out: Uint8Array | undefined;
          try {
            out = c.decompress(bad, data.length);
          } catch (err) {
            expect((err as { code?: string }).code).to.match(/^LZ4_/);
            rejected++;
            // Through the block decoder the same failure is a coded error naming the block object.
            expect(() => decodeBlock(encodeBlock('lz4', data.length, bad), object, () => c))
              .to.throw(FerryError, object)
              .with.property('code', 'REPO_CORRUPT_OBJECT');
            continue;
          }
          // LZ4 has no checksum: a flipped literal decodes to other bytes of the right length. The
          // block's SHA-256 (decodeAndVerify) rejects those; here only the length is the codec's promise.
          expect(out.length).to.equal(data.length);
        }
        expect(rejected, 'some corruptions must be detected by the codec itself').to.be.above(0);
      });
    });
  }

  it('loads the addon inside a worker thread, as the block workers do', async function () {
    this.timeout(20_000);
    const url = new URL('./index.js', import.meta.url).href;
    const code = `
      const { parentPort } = require('node:worker_threads');
      import(${JSON.stringify(url)}).then((m) => {
        const c = new m.Lz4Compressor();
        const data = Buffer.alloc(65536, 3);
        const back = Buffer.from(c.decompress(c.compress(data, 0), data.length));
        parentPort.postMessage({ impl: c.implementation, ok: back.equals(data) });
      }, (err) => parentPort.postMessage({ error: String(err) }));`;
    const w = new Worker(code, { eval: true });
    try {
      const msg = await new Promise<{ impl?: string; ok?: boolean; error?: string }>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('worker did not answer within 15 s')), 15_000);
        w.once('message', (m) => (clearTimeout(timer), resolve(m)));
        w.once('error', (e) => (clearTimeout(timer), reject(e)));
      });
      expect(msg).to.deep.equal({ impl: addon ? 'liblz4' : 'lz4-napi', ok: true });
    } finally {
      await w.terminate();
    }
  });
});
