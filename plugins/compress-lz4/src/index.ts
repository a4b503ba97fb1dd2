import { createRequire } from 'node:module';
import type { Compressor, PluginRegistrar } from '@ferry/core';

// lz4-napi is CommonJS with a native binary per platform (prebuilt, no compiler needed).
const lz4 = createRequire(import.meta.url)('lz4-napi') as {
  compressSync(data: Uint8Array): Buffer;
  uncompressSync(data: Uint8Array): Buffer;
};

/**
 * LZ4 block format with lz4-napi's 4-byte size prefix. Ignores the level: LZ4 is the fast codec
 * behind `optimal`, where the backup window matters more than the last few percent of ratio.
 */
export class Lz4Compressor implements Compressor {
  compress(data: Uint8Array, _level?: number): Uint8Array {
    return lz4.compressSync(data);
  }

  decompress(data: Uint8Array, rawLength: number): Uint8Array {
    const out = lz4.uncompressSync(data);
    if (out.length !== rawLength) throw new Error(`lz4: expanded to ${out.length} bytes, expected ${rawLength}`);
    return out;
  }
}

export function register(r: PluginRegistrar): void {
  r.register('compressor', 'lz4', { useValue: new Lz4Compressor() }, { description: 'LZ4 (lz4-napi): the optimal level' });
}
