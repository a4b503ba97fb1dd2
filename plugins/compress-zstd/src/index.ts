import { createRequire } from 'node:module';
import type { Compressor, PluginRegistrar } from '@ferry/core/plugin';

// zstd-napi is CommonJS; its native addon compiles with node-gyp at install time.
const zstd = createRequire(import.meta.url)('zstd-napi') as {
  compress(data: Uint8Array, params?: { compressionLevel?: number }): Buffer;
  decompress(data: Uint8Array): Buffer;
};

/** Zstandard frames; the level comes from the job's compression level (`high` 3, `extreme` 12). */
export class ZstdCompressor implements Compressor {
  compress(data: Uint8Array, level: number): Uint8Array {
    return zstd.compress(data, { compressionLevel: level });
  }

  decompress(data: Uint8Array, rawLength: number): Uint8Array {
    const out = zstd.decompress(data);
    if (out.length !== rawLength) throw new Error(`zstd: expanded to ${out.length} bytes, expected ${rawLength}`);
    return out;
  }
}

export function register(r: PluginRegistrar): void {
  r.register('compressor', 'zstd', { useValue: new ZstdCompressor() }, {
    description: 'Zstandard (zstd-napi): the high and extreme levels',
    // `storage.compression: { compressor: zstd, level: N }`; the job's levels use 3 and 12
    configSchema: { type: 'object', properties: { level: { type: 'integer', minimum: 1, maximum: 22, default: 3 } } },
  });
}
