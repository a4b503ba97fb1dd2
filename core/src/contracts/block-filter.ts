import type { Extent } from './extent.js';
import type { SourceDisk } from './source-host.js';

/**
 * Block filter contract: decides, on the proxy, which bytes need not be stored.
 *
 * Two hooks, and what each may change:
 * - `classify` drops whole blocks after they were read: a block it calls `'zero'` is recorded as a
 *   zero block, and a restore writes zeros (or a hole) there. It never changes a block's bytes.
 * - `skipExtents` names byte ranges before anything is read (swap areas, pagefiles: bytes whose
 *   content the guest does not need back). Bytes inside a range are never read and are stored as
 *   zeros: a block wholly inside the ranges becomes a zero block; a block the ranges cover only in
 *   part is read without those bytes, which become zeros in the stored block, and every byte of it
 *   outside the ranges is read and stored unchanged. So a range may end or start inside a block:
 *   a swap area's header page stays intact while the rest of its block is dropped.
 *   Bytes outside every range are never changed by any filter.
 *
 * Optional members and their defaults (a filter implements at least one):
 * - `skipExtents` missing: the filter skips nothing before reading. When present it is called once
 *   per disk after the transport opened it and before any block is read; `context` reads the same
 *   snapshot the session reads (the disk's first sectors, a partition table, file system metadata).
 *   Ranges must lie inside the disk, in offset order, without overlap; ranges of several filters
 *   (and, later, ranges the guest reports) are merged. A filter built for the first version of this
 *   contract, `skipExtents(disk)`, keeps working: it ignores the context.
 * - `classify` missing: every block read is kept.
 */
export interface BlockFilter {
  skipExtents?(disk: SourceDisk, context: SkipContext): Promise<Extent[]>;
  /** `zero` stores the block as a zero block. Must be pure and fast: it runs on every block. */
  classify?(block: Uint8Array, offset: number): 'keep' | 'zero';
}

/** What `skipExtents` may use to look at the disk before the session reads it. */
export interface SkipContext {
  /** The disk's size in bytes, as the transport opened it. */
  readonly size: number;
  /**
   * Reads `length` bytes at `offset` of the snapshot through the session's open transport (inside
   * `[0, size)`; a failure is `TRANSPORT_READ_FAILED`). Counted in the disk's `bytesRead`.
   */
  read(offset: number, length: number): Promise<Uint8Array>;
}
