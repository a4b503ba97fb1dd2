import type { BlockFilter } from '../contracts/block-filter.js';
import type { Compressor } from '../contracts/compressor.js';
import type { PluginKind, PluginKindMap } from '../contracts/plugin.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';

/**
 * `fn` with anything it throws, or any promise it returns rejecting, stamped with the plugin and
 * hook (and the location `where` derives from the call's arguments): a plain `Error` becomes
 * `PLUGIN_FAILED`, a `FerryError` keeps its code and gains the facts it lacked.
 */
export function guardHook<A extends unknown[], R>(
  fn: (...args: A) => R,
  plugin: string,
  hook: string,
  where: (...args: A) => ErrorLocation = () => ({}),
): (...args: A) => R {
  return (...args: A): R => {
    let out: R;
    try {
      out = fn(...args);
    } catch (err) {
      throw pluginError(err, plugin, hook, where(...args));
    }
    if (out instanceof Promise) return out.catch((err: unknown) => Promise.reject(pluginError(err, plugin, hook, where(...args)))) as R;
    return out;
  };
}

/**
 * An instance the plugin host built, with its hooks guarded by `guardHook`. Kinds whose hooks the
 * session calls with the context at hand (source hosts, transports, repositories) are guarded there.
 */
export function guardPlugin<K extends PluginKind>(kind: K, impl: PluginKindMap[K], plugin: string): PluginKindMap[K] {
  if (kind === 'block-filter') return guardFilter(impl as BlockFilter, plugin) as PluginKindMap[K];
  if (kind === 'compressor') return guardCompressor(impl as Compressor, plugin) as PluginKindMap[K];
  return impl;
}

/**
 * A filter whose `skipExtents` and `classify` errors name the plugin and hook (and the block's
 * offset; the session adds VM and disk), and whose `classify` verdicts are checked: anything but
 * `keep` or `zero` fails the disk with `PLUGIN_CONTRACT` instead of being taken as keep.
 */
export function guardFilter(impl: BlockFilter, plugin: string): BlockFilter {
  const out: BlockFilter = {};
  if (impl.skipExtents) out.skipExtents = guardHook(impl.skipExtents.bind(impl), plugin, 'skipExtents');
  if (impl.classify) {
    const classify = guardHook(impl.classify.bind(impl), plugin, 'classify', (_block, offset) => ({ offset }));
    out.classify = (block, offset) => {
      const verdict: unknown = classify(block, offset);
      if (verdict === 'keep' || verdict === 'zero') return verdict;
      throw new FerryError(
        'PLUGIN_CONTRACT',
        `classify returned ${describe(verdict)}; a block filter's verdict is 'keep' or 'zero'`,
        { plugin, hook: 'classify', offset },
      );
    };
  }
  return out;
}

/**
 * A compressor whose `compress` errors name the plugin and hook, so a compressor that fails on one
 * block fails that block's disk with `PLUGIN_FAILED` (the source mover adds the block), not with an
 * anonymous error from a worker thread. A `decompress` that throws means a damaged block: the block
 * decoder reports that itself, so it is passed through.
 */
export function guardCompressor(impl: Compressor, plugin: string): Compressor {
  return {
    compress: guardHook(impl.compress.bind(impl), plugin, 'compress'),
    compressInto: impl.compressInto && guardHook(impl.compressInto.bind(impl), plugin, 'compressInto'),
    decompress: impl.decompress.bind(impl),
    decompressInto: impl.decompressInto?.bind(impl),
  };
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === undefined || v === null || typeof v !== 'object') return String(v);
  return `a ${v.constructor?.name ?? 'object'}`;
}
