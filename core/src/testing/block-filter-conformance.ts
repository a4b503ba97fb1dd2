import assert from 'node:assert/strict';
import { mkdtemp, open, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { BlockFilter, SkipContext } from '../contracts/block-filter.js';
import type { Extent } from '../contracts/extent.js';
import type { SourceDisk } from '../contracts/source-host.js';
import { skipBecause, skipUnlessTools } from './test-skips.js';
import type { ConformanceOptions } from './transport-conformance.js';
import { makeVmImage, Prng } from './vm-image.js';

export interface BlockFilterConformanceOptions extends ConformanceOptions {
  /**
   * Blocks the filter must classify `'zero'` (a marked block, a swap page): proves the suite reached
   * the filter's dropping path, and each is also put through the purity checks. Missing: skipped.
   */
  drops?: Uint8Array[];
  /** The disk `skipExtents` is asked about; gets a raw image file. Missing: `{ name, path, size, format: 'raw' }`. */
  disk?: (file: string, size: number) => SourceDisk | Promise<SourceDisk>;
  /**
   * Writes the raw image of `size` bytes `skipExtents` looks at (a disk holding what the filter
   * skips: a swap partition, a pagefile). Missing: a VM-like image from `makeVmImage`.
   */
  image?: (file: string, size: number) => Promise<void>;
  /** At least this many ranges `skipExtents` must return for the image. Default 0. */
  minSkipRanges?: number;
}

const KiB = 1024;

/**
 * The conformance suite every block filter runs (in-tree and third-party): at least one hook,
 * `classify` verdicts only `'keep'` or `'zero'`, the same verdict for equal input at the same
 * offset and the block's bytes left alone, `skipExtents` ranges inside the disk, in order and
 * without overlap. `create` builds the filter as a job would (for a plugin package:
 * `() => loadPluginForTest(folder, 'block-filter', name, options)`).
 */
export function runBlockFilterConformance(
  name: string,
  create: () => BlockFilter | Promise<BlockFilter>,
  options: BlockFilterConformanceOptions = {},
): void {
  describe(`block-filter conformance: ${name}`, function () {
    let filter: BlockFilter;
    const blocks = sampleBlocks(options.drops ?? []);

    before(async function () {
      if (options.needs) skipUnlessTools(this, options.needs);
      filter = await create();
    });

    it('implements skipExtents or classify', function () {
      assert.ok(typeof filter.skipExtents === 'function' || typeof filter.classify === 'function', `${name} has neither hook`);
    });

    it("classify returns only 'keep' or 'zero'", function () {
      if (!filter.classify) skipBecause(this, `${name} offers no classify`);
      for (const [what, block, offset] of blocks) {
        const verdict: unknown = filter.classify!(block, offset);
        assert.ok(verdict === 'keep' || verdict === 'zero', `${what} at ${offset}: ${String(verdict)}`);
      }
    });

    it('classify is pure: equal input, equal verdict, and the block is left as it was', function () {
      if (!filter.classify) skipBecause(this, `${name} offers no classify`);
      for (const [what, block, offset] of blocks) {
        const before = Buffer.from(block);
        const first = filter.classify!(block, offset);
        assert.ok(Buffer.from(block).equals(before), `${what}: classify changed the block's bytes`);
        assert.equal(filter.classify!(Buffer.from(before), offset), first, `${what} at ${offset}: a copy got another verdict`);
        assert.equal(filter.classify!(block, offset), first, `${what} at ${offset}: a second call got another verdict`);
      }
    });

    it("classify drops the blocks it is meant to ('zero')", function () {
      if (!filter.classify) skipBecause(this, `${name} offers no classify`);
      if (!options.drops?.length) skipBecause(this, `no drops given for ${name}`);
      options.drops!.forEach((block, i) => assert.equal(filter.classify!(block, i * 64 * KiB), 'zero', `drops[${i}]`));
    });

    it('skipExtents returns whole ranges inside the disk, in order, without overlap', async function () {
      if (!filter.skipExtents) skipBecause(this, `${name} offers no skipExtents`);
      const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-filter-'));
      try {
        const size = 8 * 1024 * KiB + 4 * KiB;
        const file = path.join(dir, 'disk.raw');
        if (options.image) await options.image(file, size);
        else await makeVmImage(file, { sizeBytes: size, seed: 3 });
        const disk = options.disk ? await options.disk(file, size) : { name: 'disk0', path: file, size, format: 'raw' };
        const f = await open(file, 'r');
        let extents: Extent[];
        try {
          const context: SkipContext = {
            size,
            read: async (offset, length) => {
              const buf = Buffer.alloc(length);
              await f.read(buf, 0, length, offset);
              return buf;
            },
          };
          extents = await filter.skipExtents!(disk, context);
        } finally {
          await f.close();
        }
        assert.ok(Array.isArray(extents), 'skipExtents must resolve to an array');
        assert.ok(extents.length >= (options.minSkipRanges ?? 0), `skipExtents found ${extents.length} ranges, expected at least ${options.minSkipRanges}`);
        let end = 0;
        for (const [i, e] of extents.entries()) {
          assert.ok(Number.isSafeInteger(e.offset) && Number.isSafeInteger(e.length), `extent ${i}: integer offset and length`);
          assert.ok(e.length > 0, `extent ${i}: length > 0`);
          assert.ok(e.offset >= end, `extent ${i} at ${e.offset} starts before the previous one ends (${end})`);
          assert.ok(e.offset + e.length <= size, `extent ${i} ends at ${e.offset + e.length}, past the disk's ${size} bytes`);
          end = e.offset + e.length;
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    });
  });
}

/** [what, block, offset]: the shapes a session hands `classify`, including a short last block. */
function sampleBlocks(drops: Uint8Array[]): [string, Uint8Array, number][] {
  const rng = new Prng(21);
  const text = Buffer.from('ferry moves blocks between data movers\n'.repeat(2000));
  return [
    ['zeros 256 KiB', Buffer.alloc(256 * KiB), 0],
    ['zeros 4 KiB', Buffer.alloc(4 * KiB), 4 * KiB],
    ['random 256 KiB', rng.fill(Buffer.alloc(256 * KiB)), 256 * KiB],
    ['random 1 MiB', rng.fill(Buffer.alloc(1024 * KiB)), 1024 * KiB],
    ['text 64 KiB', text.subarray(0, 64 * KiB), 512 * KiB],
    ['one byte', Buffer.from([7]), 8 * 1024 * KiB],
    ['short last block', rng.fill(Buffer.alloc(4 * KiB + 17)), 8 * 1024 * KiB + 4 * KiB],
    ['zero tail after data', Buffer.concat([Buffer.from('x'), Buffer.alloc(64 * KiB - 1)]), 768 * KiB],
    ...drops.map((d, i): [string, Uint8Array, number] => [`drops[${i}]`, d, i * 64 * KiB]),
  ];
}
