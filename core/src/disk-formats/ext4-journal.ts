import { FerryError } from '../errors.js';
import type { DiskReader } from './disk-reader.js';

/**
 * Replays an ext3/ext4 (jbd2) journal in memory, written from the kernel's journal documentation
 * (Documentation/filesystems/ext4/journal.rst). A disk backed up while its file system was mounted
 * has committed transactions in the journal that are not yet in their home blocks; the kernel (or
 * e2fsck) would copy them there on the next mount. Here nothing is written: `replayJournal` returns
 * the newest committed copy of each logged block, and `journaledReader` serves reads from it.
 *
 * Walks the log from `s_start` with `s_sequence`: descriptor blocks name the home block of each
 * following log block (the escape flag restores a zeroed magic), revoke blocks cancel copies from
 * the same and earlier transactions, and a transaction counts only when its commit block with the
 * expected sequence is found; the first block without the magic or with another sequence ends the
 * log. Checksums are not verified; fast-commit areas are not replayed.
 */

const JBD2_MAGIC = 0xc03b3998;
const BLOCK = { DESCRIPTOR: 1, COMMIT: 2, SB_V1: 3, SB_V2: 4, REVOKE: 5 } as const;
const INCOMPAT = { REVOKE: 0x1, BIT64: 0x2, ASYNC_COMMIT: 0x4, CSUM_V2: 0x8, CSUM_V3: 0x10, FAST_COMMIT: 0x20 } as const;
const KNOWN_INCOMPAT = Object.values(INCOMPAT).reduce((a, b) => a | b, 0);
const TAG = { ESCAPE: 1, SAME_UUID: 2, DELETED: 4, LAST: 8 } as const;
/** A bound on transactions walked, against a corrupt journal that loops. */
const MAX_LOG_BLOCKS = 1 << 22;

export interface JournalReplay {
  /** File system block number → byte offset on the volume of its newest committed copy in the journal. */
  blocks: Map<number, number>;
  transactions: number;
  /** Features or facts that limit the replay (fast commits left out). */
  notes: string[];
}

function be32(b: Uint8Array, o: number): number {
  return ((b[o]! << 24) >>> 0) + (b[o + 1]! << 16) + (b[o + 2]! << 8) + b[o + 3]!;
}

function corrupt(detail: string): FerryError {
  return new FerryError('DISK_FORMAT_INVALID', `ext4 journal: ${detail}`);
}

/**
 * Reads the journal whose logical blocks are mapped by `journalBlock` (logical → byte offset on the
 * volume, or null for a hole) and returns what a replay would write.
 */
export async function replayJournal(read: DiskReader, blockSize: number, journalBlock: (logical: number) => number | null): Promise<JournalReplay> {
  const at = async (logical: number): Promise<Uint8Array> => {
    const off = journalBlock(logical);
    if (off === null) throw corrupt(`log block ${logical} is not mapped`);
    return read(off, blockSize);
  };
  const sb = await at(0);
  if (be32(sb, 0) !== JBD2_MAGIC) throw corrupt('no journal superblock (magic 0xC03B3998)');
  const sbType = be32(sb, 4);
  if (sbType !== BLOCK.SB_V1 && sbType !== BLOCK.SB_V2) throw corrupt(`block 0 has type ${sbType}, not a journal superblock`);
  if (be32(sb, 0xc) !== blockSize) throw corrupt(`journal block size ${be32(sb, 0xc)} differs from the file system's ${blockSize}`);
  const maxLen = be32(sb, 0x10);
  const first = be32(sb, 0x14);
  let sequence = be32(sb, 0x18);
  const start = be32(sb, 0x1c);
  const incompat = sbType === BLOCK.SB_V2 ? be32(sb, 0x28) : 0;
  const result: JournalReplay = { blocks: new Map(), transactions: 0, notes: [] };
  if (start === 0) return result; // clean journal
  if (incompat & ~KNOWN_INCOMPAT) throw new FerryError('DISK_FORMAT_UNSUPPORTED', `ext4 journal: unknown incompatible features 0x${(incompat & ~KNOWN_INCOMPAT).toString(16)}`);
  if (incompat & INCOMPAT.FAST_COMMIT) result.notes.push('fast commits are not replayed');
  if (first < 1 || first >= maxLen || start < first || start >= maxLen) throw corrupt(`log bounds first ${first}, start ${start}, length ${maxLen} are inconsistent`);
  const csumV3 = (incompat & INCOMPAT.CSUM_V3) !== 0;
  const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
  const tail = incompat & (INCOMPAT.CSUM_V2 | INCOMPAT.CSUM_V3) ? 4 : 0;
  const tagSize = csumV3 ? 16 : 8 + (bit64 ? 4 : 0);
  const next = (b: number): number => (b + 1 >= maxLen ? first : b + 1);

  let pos = start;
  // The transaction being read: its logged copies (home block → log position) and revoked blocks.
  let copies: Array<[number, number]> = [];
  let revoked: number[] = [];
  for (let walked = 0; walked < Math.min(maxLen, MAX_LOG_BLOCKS); walked++) {
    const blk = await at(pos);
    if (be32(blk, 0) !== JBD2_MAGIC || be32(blk, 8) !== sequence) break;
    const type = be32(blk, 4);
    if (type === BLOCK.DESCRIPTOR) {
      let o = 12;
      for (;;) {
        if (o + tagSize > blockSize - tail) throw corrupt(`descriptor block at log block ${pos} has no last tag`);
        const lo = be32(blk, o);
        const flags = csumV3 ? be32(blk, o + 4) : (blk[o + 6]! << 8) | blk[o + 7]!;
        const hi = csumV3 ? be32(blk, o + 8) : bit64 ? be32(blk, o + 8) : 0;
        o += tagSize;
        if (!(flags & TAG.SAME_UUID)) o += 16;
        pos = next(pos);
        walked++;
        if (!(flags & TAG.DELETED)) copies.push([hi * 2 ** 32 + lo, flags & TAG.ESCAPE ? -pos - 1 : pos]);
        if (flags & TAG.LAST) break;
      }
      pos = next(pos);
      continue;
    }
    if (type === BLOCK.REVOKE) {
      const count = Math.min(be32(blk, 12), blockSize - tail);
      const width = bit64 ? 8 : 4;
      for (let o = 16; o + width <= count; o += width) revoked.push(bit64 ? be32(blk, o) * 2 ** 32 + be32(blk, o + 4) : be32(blk, o));
      pos = next(pos);
      continue;
    }
    if (type === BLOCK.COMMIT) {
      // Revokes cancel copies from earlier transactions and this one; later ones replay again.
      for (const b of revoked) result.blocks.delete(b);
      const gone = new Set(revoked);
      for (const [home, logPos] of copies) if (!gone.has(home)) result.blocks.set(home, logPos);
      copies = [];
      revoked = [];
      result.transactions++;
      sequence = (sequence + 1) >>> 0;
      pos = next(pos);
      continue;
    }
    break; // any other block type ends the log
  }
  // Log positions → byte offsets; an escaped block (negative) is resolved by the reader.
  const out = new Map<number, number>();
  for (const [home, logPos] of result.blocks) {
    const p = logPos < 0 ? -logPos - 1 : logPos;
    const off = journalBlock(p);
    if (off === null) throw corrupt(`log block ${p} is not mapped`);
    out.set(home, logPos < 0 ? -off - 1 : off);
  }
  result.blocks = out;
  return result;
}

/**
 * `read` with the journal's copies laid over their home blocks. An escaped copy (stored with its
 * first four bytes zeroed because they looked like the journal magic) gets the magic back.
 */
export function journaledReader(read: DiskReader, blockSize: number, blocks: Map<number, number>): DiskReader {
  if (blocks.size === 0) return read;
  return async (offset, length) => {
    const firstBlock = Math.floor(offset / blockSize);
    const lastBlock = Math.floor((offset + length - 1) / blockSize);
    let hit = false;
    for (let b = firstBlock; b <= lastBlock && !hit; b++) hit = blocks.has(b);
    if (!hit || length === 0) return read(offset, length);
    const out = Buffer.from(await read(offset, length));
    for (let b = firstBlock; b <= lastBlock; b++) {
      const src = blocks.get(b);
      if (src === undefined) continue;
      const copy = Buffer.from(await read(src < 0 ? -src - 1 : src, blockSize));
      if (src < 0) copy.writeUInt32BE(JBD2_MAGIC, 0);
      const from = Math.max(offset, b * blockSize);
      const to = Math.min(offset + length, (b + 1) * blockSize);
      copy.copy(out, from - offset, from - b * blockSize, to - b * blockSize);
    }
    return out;
  };
}
