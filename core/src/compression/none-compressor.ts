import type { Compressor } from '../contracts/compressor.js';

/** Stores blocks as they are. Also used for any block a compressor could not shrink. */
export class NoneCompressor implements Compressor {
  compress(data: Uint8Array): Uint8Array {
    return data;
  }

  decompress(data: Uint8Array, rawLength: number): Uint8Array {
    if (data.length !== rawLength) throw new Error(`none: block holds ${data.length} bytes, expected ${rawLength}`);
    return data;
  }
}
