import { createRequire } from 'node:module';

/** The native `ferry_lz4` addon (native/lz4.c): LZ4 block format through the system's liblz4.so.1. */
export interface Lz4Addon {
  /** The 4-byte little-endian length, then one LZ4 block: lz4-napi's `compressSync` format. */
  compress(data: Uint8Array): Buffer;
  /**
   * `compress`'s bytes written into `out`; their length, or 0 when they would not be shorter than
   * `data` or do not fit in `out`. Missing from addons built before it existed.
   */
  compressInto?(data: Uint8Array, out: Uint8Array): number;
  /**
   * Checks the length prefix against `rawLength` and `limit` before allocating, and that the block
   * decodes to exactly that length; throws an Error with `code` LZ4_TRUNCATED, LZ4_LENGTH_MISMATCH,
   * LZ4_TOO_LARGE or LZ4_CORRUPT otherwise.
   */
  decompress(data: Uint8Array, rawLength: number, limit: number): Buffer;
  /** `decompress` into the start of `out` (whose length is the limit). Missing from older builds. */
  decompressInto?(data: Uint8Array, rawLength: number, out: Uint8Array): void;
  /** liblz4's version, e.g. "1.9.4". */
  readonly version: string;
}

/**
 * The addon built by `node-gyp rebuild` at install time, or undefined where it was not built or
 * liblz4.so.1 cannot be loaded (the dynamic loader then fails the require). Callers fall back to
 * lz4-napi, which reads and writes the same format.
 */
export function loadLz4Addon(): Lz4Addon | undefined {
  try {
    const addon = createRequire(import.meta.url)('../build/Release/ferry_lz4.node') as Partial<Lz4Addon>;
    const complete = typeof addon.compress === 'function' && typeof addon.decompress === 'function' && typeof addon.version === 'string';
    return complete ? (addon as Lz4Addon) : undefined;
  } catch {
    return undefined;
  }
}
