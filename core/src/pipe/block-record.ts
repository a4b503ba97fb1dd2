/**
 * What crosses the data pipe from the source-side mover to the target-side mover, per disk: one
 * `DiskHeader`, then records in index order, each for one block, or (`zero` and `unchanged` records
 * with a `count`) for a run of consecutive blocks.
 */
export interface DiskHeader {
  vm: string;
  disk: string;
  sizeBytes: number;
  blockSize: number;
}

export type BlockRecord = ZeroBlockRecord | DataBlockRecord | KnownBlockRecord | UnchangedBlockRecord;

/**
 * A run of blocks without data: `count` consecutive blocks from `index` (absent: 1), `length` the
 * bytes of all of them (the disk's last block may be short). A record without `count` is the
 * one-block record it always was; a consumer that takes runs handles both (`recordBlocks`).
 */
export interface BlockRun {
  /** Blocks in the run, from `index` on; absent means 1. */
  count?: number;
}

/** A block (or a run of them) stored as zeros: a hole, an all-zero block, or a range a filter dropped. */
export interface ZeroBlockRecord extends BlockRun {
  kind: 'zero';
  index: number;
  length: number;
  /** Whether the block was read (`false`: a hole or skipped range, never read). */
  read: boolean;
}

export interface DataBlockRecord {
  kind: 'data';
  index: number;
  length: number;
  /** SHA-256 of the raw block. */
  hash: Buffer;
  /** The block object as stored (`docs/repository-format.md`): header with CRC-32, compressed payload. */
  encoded: Buffer;
}

/**
 * A block the target already holds (the source asked before compressing it): only the hash
 * crosses the pipe. The target checks again and fails the disk if the block is gone.
 */
export interface KnownBlockRecord {
  kind: 'known';
  index: number;
  length: number;
  hash: Buffer;
}

/** Incremental runs: a block (or a run of them) changed-block tracking says was not written since the base point. */
export interface UnchangedBlockRecord extends BlockRun {
  kind: 'unchanged';
  index: number;
  length: number;
}

/** The blocks a record stands for: its `count` for a run, else 1. */
export function recordBlocks(rec: BlockRecord): number {
  return (rec.kind === 'zero' || rec.kind === 'unchanged') && rec.count !== undefined ? rec.count : 1;
}
