import { DeflateCompressor } from './compression/deflate-compressor.js';
import { NoneCompressor } from './compression/none-compressor.js';
import { RleCompressor } from './compression/rle-compressor.js';
import type { PluginRegistrar } from './contracts/plugin.js';
import { SWAP_FILTER_SCHEMA, SwapBlockFilter } from './filters/swap-block-filter.js';
import { ZeroBlockFilter } from './filters/zero-block-filter.js';
import { Tokens } from './tokens.js';

/** Implementations the core itself provides, registered like any plugin's. */
export function registerBuiltins(r: PluginRegistrar): void {
  r.register('compressor', 'none', { useValue: new NoneCompressor() }, { description: 'stores blocks uncompressed' });
  r.register('compressor', 'rle', { useValue: new RleCompressor() }, { description: 'run-length encoding (dedupe-friendly)' });
  r.register('compressor', 'deflate', { useValue: new DeflateCompressor() }, {
    description: 'raw deflate via node:zlib',
    configSchema: { type: 'object', properties: { level: { type: 'integer', minimum: 1, maximum: 9, default: 6 } } },
  });
  r.register('block-filter', 'zero', { useValue: new ZeroBlockFilter() }, { description: 'stores all-zero blocks as zero blocks' });
  r.register('block-filter', 'swap', { useFactory: (c) => new SwapBlockFilter(c.resolve(Tokens.PluginConfig)) }, {
    description: 'skips Linux swap areas and Windows pagefile/swapfile/hiberfil found on the disk (swap headers kept)',
    configSchema: SWAP_FILTER_SCHEMA,
  });
}
