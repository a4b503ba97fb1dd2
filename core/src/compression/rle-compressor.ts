import type { Compressor } from '../contracts/compressor.js';

/**
 * Byte run-length encoding (PackBits): the `dedupe-friendly` level. Very cheap, and a change to one
 * byte changes only the bytes of that run in the output, so deduplicating storage behind Ferry still
 * finds long identical stretches.
 *
 * Encoding: a control byte c; c < 128: c+1 literal bytes follow; c >= 128: the next byte repeats
 * c-125 times (3..130).
 */
export class RleCompressor implements Compressor {
  compress(data: Uint8Array): Uint8Array {
    const n = data.length;
    const out = Buffer.allocUnsafe(n + Math.ceil(n / 128) + 1);
    let o = 0;
    let i = 0;
    let litStart = 0;
    const flush = (end: number): void => {
      while (litStart < end) {
        const len = Math.min(128, end - litStart);
        out[o++] = len - 1;
        out.set(data.subarray(litStart, litStart + len), o);
        o += len;
        litStart += len;
      }
    };
    while (i < n) {
      const b = data[i];
      let run = 1;
      while (i + run < n && run < 130 && data[i + run] === b) run++;
      if (run >= 3) {
        flush(i);
        out[o++] = run + 125;
        out[o++] = b;
        i += run;
        litStart = i;
      } else {
        i += run;
      }
    }
    flush(n);
    return out.subarray(0, o);
  }

  decompress(data: Uint8Array, rawLength: number): Uint8Array {
    const out = Buffer.allocUnsafe(rawLength);
    let o = 0;
    let i = 0;
    while (i < data.length) {
      const c = data[i++];
      if (c < 128) {
        const len = c + 1;
        if (i + len > data.length || o + len > rawLength) throw new Error('rle: damaged literal run');
        out.set(data.subarray(i, i + len), o);
        i += len;
        o += len;
      } else {
        const len = c - 125;
        if (i >= data.length || o + len > rawLength) throw new Error('rle: damaged repeat run');
        out.fill(data[i++], o, o + len);
        o += len;
      }
    }
    if (o !== rawLength) throw new Error(`rle: expanded to ${o} bytes, expected ${rawLength}`);
    return out;
  }
}
