import type { Compressor } from '../contracts/compressor.js';
import { pluginError } from '../errors.js';

/**
 * Stamps the plugin package and hook on anything a compressor throws, so a compressor that fails on
 * one block fails that block's disk with `PLUGIN_FAILED` naming the plugin (the source mover adds
 * the block), not with an anonymous error from a worker thread.
 */
export function guardCompressor(impl: Compressor, plugin: string): Compressor {
  const into = impl.compressInto?.bind(impl);
  return {
    compress(data, level) {
      try {
        return impl.compress(data, level);
      } catch (err) {
        throw pluginError(err, plugin, 'compress');
      }
    },
    compressInto:
      into &&
      ((data, level, out) => {
        try {
          return into(data, level, out);
        } catch (err) {
          throw pluginError(err, plugin, 'compressInto');
        }
      }),
    // A decompress that throws means a damaged block: the block decoder reports that itself.
    decompress: (data, rawLength) => impl.decompress(data, rawLength),
    decompressInto: impl.decompressInto?.bind(impl),
  };
}
