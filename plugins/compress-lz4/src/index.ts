import { createRequire } from 'node:module';
import type { Compressor, PluginRegistrar } from '@ferry/core/plugin';
// Not from '@ferry/core' (the whole core): this module loads in every worker thread.
import { MAX_BLOCK_SIZE } from '@ferry/core/limits';
import { loadLz4Addon, type Lz4Addon } from './lz4-addon.js';

export { loadLz4Addon, type Lz4Addon } from './lz4-addon.js';

/** lz4-napi (CommonJS, a prebuilt Rust lz4_flex binary per platform): the fallback and the format reference. */
export interface Lz4Napi {
  compressSync(data: Uint8Array): Buffer;
  uncompressSync(data: Uint8Array): Buffer;
}

let napi: Lz4Napi | undefined;
/** Loaded on first use, so a process on the addon never maps lz4-napi's binary. */
export function lz4Napi(): Lz4Napi {
  napi ??= createRequire(import.meta.url)('lz4-napi') as Lz4Napi;
  return napi;
}

/** Which implementation a compressor runs, for descriptions and the bench. */
export type Lz4Implementation = 'liblz4' | 'lz4-napi';

/**
 * LZ4 block format with lz4-napi's 4-byte little-endian size prefix. Ignores the level: LZ4 is the
 * fast codec behind `optimal`, where the backup window matters more than the last few percent of ratio.
 *
 * Two implementations of the same format: the `ferry_lz4` addon over the system's liblz4 (about 1.6x
 * faster compressing and 2.5x decompressing than lz4-napi on VM-like blocks, see docs/performance.md)
 * when it was built and liblz4.so.1 loads, else lz4-napi. Blocks written by either restore with the
 * other (the compressed bytes may differ; block ids hash the raw data, so dedup is unaffected).
 */
export class Lz4Compressor implements Compressor {
  readonly implementation: Lz4Implementation;
  private readonly addon: Lz4Addon | undefined;

  /**
   * `addon`: `null` forces lz4-napi; default: the addon built at install, if it loads, unless the
   * environment says FERRY_LZ4=lz4-napi (for before/after measurements and as an escape hatch).
   */
  constructor(addon: Lz4Addon | null = process.env.FERRY_LZ4 === 'lz4-napi' ? null : (loadLz4Addon() ?? null)) {
    this.addon = addon ?? undefined;
    this.implementation = addon ? 'liblz4' : 'lz4-napi';
  }

  /** e.g. "liblz4 1.9.4 (ferry_lz4 addon)" or "lz4-napi (ferry_lz4 addon not loaded)". */
  describe(): string {
    if (this.addon) return `liblz4 ${this.addon.version} (ferry_lz4 addon)`;
    return process.env.FERRY_LZ4 === 'lz4-napi' ? 'lz4-napi (FERRY_LZ4=lz4-napi)' : 'lz4-napi (ferry_lz4 addon not loaded)';
  }

  compress(data: Uint8Array, _level?: number): Uint8Array {
    return this.addon ? this.addon.compress(data) : lz4Napi().compressSync(data);
  }

  /** Straight into the caller's memory with the addon; without it, `compress` and one copy. */
  compressInto(data: Uint8Array, _level: number, out: Uint8Array): number {
    if (this.addon?.compressInto) return this.addon.compressInto(data, out);
    const c = this.compress(data);
    if (c.length >= data.length || c.length > out.length) return 0;
    out.set(c);
    return c.length;
  }

  /** Straight into the caller's memory with the addon; without it, `decompress` and one copy. */
  decompressInto(data: Uint8Array, rawLength: number, out: Uint8Array): void {
    if (this.addon?.decompressInto) return this.addon.decompressInto(data, rawLength, out.subarray(0, Math.min(out.length, MAX_BLOCK_SIZE)));
    out.set(this.decompress(data, rawLength));
  }

  decompress(data: Uint8Array, rawLength: number): Uint8Array {
    if (this.addon) return this.addon.decompress(data, rawLength, MAX_BLOCK_SIZE);
    // lz4-napi allocates whatever the prefix declares (up to 4 GiB): check it first, as the addon does.
    if (data.length < 4) throw coded('LZ4_TRUNCATED', `lz4: ${data.length} bytes is too short for the 4-byte length prefix`);
    const declared = (data[0] | (data[1] << 8) | (data[2] << 16) | (data[3] << 24)) >>> 0;
    if (declared > MAX_BLOCK_SIZE) throw coded('LZ4_TOO_LARGE', `lz4: declared length ${declared} exceeds the ${MAX_BLOCK_SIZE}-byte block size limit`);
    if (declared !== rawLength) throw coded('LZ4_LENGTH_MISMATCH', `lz4: declared length ${declared}, expected ${rawLength}`);
    let out: Buffer;
    try {
      out = lz4Napi().uncompressSync(data);
    } catch (err) {
      throw coded('LZ4_CORRUPT', `lz4: damaged block (${(err as Error).message})`);
    }
    if (out.length !== rawLength) throw coded('LZ4_CORRUPT', `lz4: block decoded to ${out.length} bytes, its prefix declares ${rawLength}`);
    return out;
  }
}

function coded(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

export function register(r: PluginRegistrar): void {
  const c = new Lz4Compressor();
  r.register('compressor', 'lz4', { useValue: c }, { description: `LZ4 through ${c.describe()}: the optimal level` });
}
