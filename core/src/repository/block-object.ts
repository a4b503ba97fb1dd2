import type { Compressor } from '../contracts/compressor.js';
import { FerryError } from '../errors.js';
import { crc32 } from '../util/checksums.js';
import { copyBytes } from '../util/bytes.js';

/**
 * A stored block (`docs/repository-format.md`, "Block objects"):
 *
 *   0   4  magic "FBK1"
 *   4   4  CRC-32 (LE) of every byte after this field
 *   8   1  format version (1)
 *   9   1  compressor name length n (1..32)
 *   10  n  compressor name (ASCII)
 *   10+n 4 raw (uncompressed) length, LE
 *   14+n   payload
 */
export const BLOCK_MAGIC = Buffer.from('FBK1', 'ascii');
const VERSION = 1;

export function encodeBlock(compressor: string, rawLength: number, payload: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(blockHeaderLength(compressor) + payload.length);
  const head = writeBlockHeader(out, compressor, rawLength);
  copyBytes(payload, out, head);
  finishBlock(out, out.length);
  return out;
}

/** Bytes before the payload of a block object whose compressor is `compressor`. */
export function blockHeaderLength(compressor: string): number {
  return 14 + compressor.length;
}

/**
 * Writes a block object's header (CRC-32 left for `finishBlock`) at the start of `out`; returns
 * where the payload starts. For encoders that write the payload in place.
 */
export function writeBlockHeader(out: Buffer, compressor: string, rawLength: number): number {
  const name = Buffer.from(compressor, 'ascii');
  if (name.length < 1 || name.length > 32 || name.length !== compressor.length) {
    throw new FerryError('INTERNAL', `compressor name "${compressor}" must be 1..32 ASCII bytes`);
  }
  BLOCK_MAGIC.copy(out, 0);
  out[8] = VERSION;
  out[9] = name.length;
  name.copy(out, 10);
  out.writeUInt32LE(rawLength, 10 + name.length);
  return 14 + name.length;
}

/** Stores the CRC-32 of a block object that fills `out[0, length)`, header and payload written. */
export function finishBlock(out: Buffer, length: number): void {
  out.writeUInt32LE(crc32(out.subarray(8, length)), 4);
}

export interface DecodedBlockHeader {
  compressor: string;
  rawLength: number;
  payload: Uint8Array;
}

/** Checks magic, version and CRC; throws REPO_CORRUPT_OBJECT naming `object` on any mismatch. */
export function parseBlock(data: Uint8Array, object: string): DecodedBlockHeader {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `block object ${why}`, { object });
  if (buf.length < 15 || !buf.subarray(0, 4).equals(BLOCK_MAGIC)) throw bad('has no FBK1 header');
  if (crc32(buf.subarray(8)) !== buf.readUInt32LE(4)) throw bad('fails its CRC-32 check');
  if (buf[8] !== VERSION) throw bad(`has unsupported version ${buf[8]}`);
  const n = buf[9];
  if (n < 1 || n > 32 || 14 + n > buf.length) throw bad('has a malformed header');
  return {
    compressor: buf.subarray(10, 10 + n).toString('ascii'),
    rawLength: buf.readUInt32LE(10 + n),
    payload: buf.subarray(14 + n),
  };
}

/** Decodes a block to its raw bytes; the caller checks the SHA-256 against the block map. */
export function decodeBlock(data: Uint8Array, object: string, compressors: (name: string) => Compressor | undefined): Uint8Array {
  const h = parseBlock(data, object);
  const c = compressors(h.compressor);
  if (!c) throw new FerryError('PLUGIN_NOT_FOUND', `block was compressed with "${h.compressor}", which no loaded plugin provides`, { object });
  try {
    return c.decompress(h.payload, h.rawLength);
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `block does not decompress: ${(err as Error).message}`, { object }, { cause: err });
  }
}

/**
 * `decodeBlock` into the start of `out` instead of a new buffer; returns the raw length. A block
 * declaring more raw bytes than `out` holds is refused before anything is decoded.
 */
export function decodeBlockInto(data: Uint8Array, object: string, compressors: (name: string) => Compressor | undefined, out: Uint8Array): number {
  const h = parseBlock(data, object);
  if (h.rawLength > out.length) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `block declares ${h.rawLength} raw bytes, more than the ${out.length} expected`, { object });
  }
  const c = compressors(h.compressor);
  if (!c) throw new FerryError('PLUGIN_NOT_FOUND', `block was compressed with "${h.compressor}", which no loaded plugin provides`, { object });
  const into = out.subarray(0, h.rawLength);
  try {
    if (c.decompressInto) c.decompressInto(h.payload, h.rawLength, into);
    else {
      const raw = c.decompress(h.payload, h.rawLength);
      if (raw.length !== h.rawLength) throw new Error(`decoded to ${raw.length} bytes, the header declares ${h.rawLength}`);
      copyBytes(raw, into);
    }
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `block does not decompress: ${(err as Error).message}`, { object }, { cause: err });
  }
  return h.rawLength;
}
