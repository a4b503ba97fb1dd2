import { createHash } from 'node:crypto';
import { crc32 as zlibCrc32 } from 'node:zlib';

/** SHA-256 through node:crypto (~8x sha256-uint8array here; see `npm run bench`). */
export function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}

/**
 * CRC-32 (IEEE) as an unsigned 32-bit integer, through node:zlib (Node >= 20.15): ~4x the crc-32
 * package here (`npm run bench` measures both); the values are the same.
 */
export function crc32(data: Uint8Array, seed = 0): number {
  return zlibCrc32(data, seed) >>> 0;
}
