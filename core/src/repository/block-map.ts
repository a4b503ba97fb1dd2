import { FerryError } from '../errors.js';
import { crc32 } from '../util/checksums.js';

/**
 * A disk's block map in a restore point (`docs/repository-format.md`, "Block maps"): for block i, the
 * SHA-256 of its content, or 32 zero bytes for a zero block.
 *
 *   0   4  magic "FMAP"
 *   4   2  version (1), LE
 *   6   2  entry size (32), LE
 *   8   4  block size, LE
 *   12  4  reserved (0)
 *   16  8  disk size in bytes, LE
 *   24  8  block count, LE
 *   32  32 x count  entries
 *   end 4  CRC-32 (LE) of every byte before it
 */
const MAGIC = Buffer.from('FMAP', 'ascii');
const HEADER = 32;
export const HASH_SIZE = 32;
const ZERO_HASH = Buffer.alloc(HASH_SIZE);

export class BlockMap {
  readonly entries: Buffer;

  constructor(
    readonly diskSize: number,
    readonly blockSize: number,
    entries?: Buffer,
  ) {
    this.entries = entries ?? Buffer.alloc(this.blockCount * HASH_SIZE);
  }

  get blockCount(): number {
    return Math.ceil(this.diskSize / this.blockSize);
  }

  /** Byte length of block `i`, or of the `n` blocks from `i` on (the last block may be short). */
  lengthOf(i: number, n = 1): number {
    return Math.min(n * this.blockSize, this.diskSize - i * this.blockSize);
  }

  set(i: number, hash: Uint8Array): void {
    this.entries.set(hash, i * HASH_SIZE);
  }

  /** Marks block `i` (or the `n` blocks from `i` on) as zero blocks. */
  setZero(i: number, n = 1): void {
    this.entries.fill(0, i * HASH_SIZE, (i + n) * HASH_SIZE);
  }

  /** Takes block `i`'s entry (or those of the `n` blocks from `i` on) from another map of the same disk geometry (incremental runs). */
  copyEntry(from: BlockMap, i: number, n = 1): void {
    from.entries.copy(this.entries, i * HASH_SIZE, i * HASH_SIZE, (i + n) * HASH_SIZE);
  }

  /** The block's SHA-256, or undefined for a zero block. */
  get(i: number): Buffer | undefined {
    const h = this.entries.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE);
    return h.equals(ZERO_HASH) ? undefined : h;
  }

  encode(): Buffer {
    const out = Buffer.alloc(HEADER + this.entries.length + 4);
    MAGIC.copy(out, 0);
    out.writeUInt16LE(1, 4);
    out.writeUInt16LE(HASH_SIZE, 6);
    out.writeUInt32LE(this.blockSize, 8);
    out.writeBigUInt64LE(BigInt(this.diskSize), 16);
    out.writeBigUInt64LE(BigInt(this.blockCount), 24);
    this.entries.copy(out, HEADER);
    out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
    return out;
  }

  static decode(data: Uint8Array, object: string): BlockMap {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `block map ${why}`, { object });
    if (buf.length < HEADER + 4 || !buf.subarray(0, 4).equals(MAGIC)) throw bad('has no FMAP header');
    if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw bad('fails its CRC-32 check');
    if (buf.readUInt16LE(4) !== 1 || buf.readUInt16LE(6) !== HASH_SIZE) throw bad('has an unsupported version');
    const blockSize = buf.readUInt32LE(8);
    const diskSize = Number(buf.readBigUInt64LE(16));
    const count = Number(buf.readBigUInt64LE(24));
    if (blockSize === 0 || count !== Math.ceil(diskSize / blockSize) || buf.length !== HEADER + count * HASH_SIZE + 4) {
      throw bad('has inconsistent sizes');
    }
    return new BlockMap(diskSize, blockSize, Buffer.from(buf.subarray(HEADER, HEADER + count * HASH_SIZE)));
  }
}
