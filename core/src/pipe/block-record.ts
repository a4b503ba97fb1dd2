/**
 * What crosses the data pipe from the source-side mover to the target-side mover, per disk: one
 * `DiskHeader`, then one record per block in index order.
 */
export interface DiskHeader {
  vm: string;
  disk: string;
  sizeBytes: number;
  blockSize: number;
}

export type BlockRecord = ZeroBlockRecord | DataBlockRecord | KnownBlockRecord | UnchangedBlockRecord;

/** A block stored as zeros: a hole, an all-zero block, or a range a filter dropped. */
export interface ZeroBlockRecord {
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

/** Incremental runs: a block changed-block tracking says was not written since the base point. */
export interface UnchangedBlockRecord {
  kind: 'unchanged';
  index: number;
  length: number;
}
