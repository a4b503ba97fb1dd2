import { registerBuiltinCompressors } from './compression/builtin-compressors.js';
import type { PluginRegistrar } from './contracts/plugin.js';
import { SWAP_FILTER_SCHEMA, SwapBlockFilter } from './filters/swap-block-filter.js';
import { ZeroBlockFilter } from './filters/zero-block-filter.js';
import { Tokens } from './tokens.js';

/** Implementations the core itself provides, registered like any plugin's. */
export function registerBuiltins(r: PluginRegistrar): void {
  registerBuiltinCompressors(r);
  r.register('block-filter', 'zero', { useValue: new ZeroBlockFilter() }, { description: 'stores all-zero blocks as zero blocks' });
  r.register('block-filter', 'swap', { useFactory: (c) => new SwapBlockFilter(c.resolve(Tokens.PluginConfig)) }, {
    description: 'skips Linux swap areas and Windows pagefile/swapfile/hiberfil found on the disk (swap headers kept)',
    configSchema: SWAP_FILTER_SCHEMA,
  });
}
