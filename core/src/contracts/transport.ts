import type { AllocationExtent, Extent } from './extent.js';
import type { SourceDisk } from './source-host.js';

/**
 * Transport mode contract: how the backup proxy reads a snapshot's disk (hot-add: open the image on
 * the datastore; NBD: read the host's export over the network).
 *
 * Required: `open`, and on the handle `size`, `read`, `close`.
 *
 * Invariants:
 * - `read(offset, length)` returns exactly `length` bytes for any range inside `[0, size)`; a short
 *   read or I/O failure is a FerryError `TRANSPORT_READ_FAILED` naming the disk and offset.
 * - `close` releases everything `open` took and may be called once, after any failure.
 * - A handle is used by one session; `read` may be called with several requests in flight.
 *
 * Optional members and their defaults:
 * - `probe` missing: the transport is assumed able to open every disk (auto mode tries it in order).
 * - `DiskHandle.blockStatus` missing: every byte is `data` (nothing is skipped before reading; zero
 *   blocks are still found by the zero-block filter after reading).
 * - `DiskHandle.changedBlocks` missing: every block counts as changed (a full read).
 * - `DiskHandle.readInto` missing: the core calls `read` and uses the buffer it returns (a fresh
 *   allocation per block; `readInto` lets the core reuse its block buffers).
 * - `DiskHandle.fd` missing: blocks are read through the handle's methods (with it, the core's block
 *   threads may read the descriptor themselves).
 * - `openTarget` missing: the transport cannot be a restore target. When present, it returns
 *   undefined for addresses it does not understand, so the core can ask every transport in turn.
 */
export interface Transport {
  probe?(disk: SourceDisk): Promise<ProbeResult>;
  open(disk: SourceDisk): Promise<DiskHandle>;
  /** A restore target at `address` (for NBD: `nbd://host/export`, `nbd+unix:///export?socket=...`). */
  openTarget?(address: string): Promise<WritableDisk | undefined>;
}

/**
 * A disk a restore writes to. Errors are FerryError `RESTORE_TARGET` naming the target and offset.
 * `writeZeroes` missing: the core writes buffers of zeros.
 */
export interface WritableDisk {
  readonly size: number;
  /** Where it is, for reports. */
  readonly label: string;
  write(offset: number, data: Uint8Array): Promise<void>;
  writeZeroes?(offset: number, length: number): Promise<void>;
  /** Makes everything written durable on the target. */
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface ProbeResult {
  ok: boolean;
  /** One line for the session report: why this mode can or cannot read the disk. */
  reason: string;
}

export interface DiskHandle {
  readonly size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Fills `into` with the `into.length` bytes at `offset`, under the same rules as `read`. The
   * buffer is the caller's (reused for later blocks): keep no reference to it after resolving.
   */
  readInto?(offset: number, into: Uint8Array): Promise<void>;
  /**
   * An open file descriptor whose bytes are the disk's from byte 0 (a raw image or a block device),
   * valid until `close`. The core's block threads may then read blocks themselves with positional
   * reads on it (a short read is an error, as for `read`), each right before hashing and
   * compressing it, instead of one hand-off through the main thread per block. Missing: blocks are
   * read through `readInto` or `read`. Leave it out when reads do more than a positional read
   * (a format layer, a network, checks of their own).
   */
  readonly fd?: number;
  /**
   * Allocation of `[offset, offset+length)`: extents in order, without gaps, covering at least the
   * first byte of the range (callers ask again for the remainder).
   */
  blockStatus?(offset: number, length: number): Promise<AllocationExtent[]>;
  /**
   * Ranges changed since the disk's `changes.since` point, in order, within the asked range. One
   * answer covers the whole asked range: a byte not in the answer has not changed.
   */
  changedBlocks?(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}
