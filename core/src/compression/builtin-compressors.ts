import type { PluginRegistrar } from '../contracts/plugin.js';
import { DeflateCompressor } from './deflate-compressor.js';
import { NoneCompressor } from './none-compressor.js';
import { RleCompressor } from './rle-compressor.js';

/**
 * The core's own compressors, registered like any plugin's. Apart from `registerBuiltins` so that a
 * block worker, which needs compressors only, does not load the block filters (and the disk formats
 * the swap filter reads).
 */
export function registerBuiltinCompressors(r: PluginRegistrar): void {
  r.register('compressor', 'none', { useValue: new NoneCompressor() }, { description: 'stores blocks uncompressed' });
  r.register('compressor', 'rle', { useValue: new RleCompressor() }, { description: 'run-length encoding (dedupe-friendly)' });
  r.register('compressor', 'deflate', { useValue: new DeflateCompressor() }, {
    description: 'raw deflate via node:zlib',
    configSchema: { type: 'object', properties: { level: { type: 'integer', minimum: 1, maximum: 9, default: 6 } } },
  });
}
