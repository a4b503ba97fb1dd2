import { createHash } from 'node:crypto';
import CRC32 from 'crc-32';

/** SHA-256 through node:crypto (~8x sha256-uint8array here; see `npm run bench`). */
export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/** CRC-32 (IEEE) as an unsigned 32-bit integer. */
export function crc32(data: Uint8Array, seed = 0): number {
  return CRC32.buf(data, seed) >>> 0;
}
