import type { Extent } from './extent.js';
import type { SourceDisk } from './source-host.js';

/**
 * Block filter contract: decides, on the proxy, which blocks need not be stored.
 * A block a filter drops is recorded as a zero block: a restore writes zeros (or a hole) there.
 * Filters never change a block's bytes.
 *
 * Optional members and their defaults (a filter implements at least one):
 * - `skipExtents` missing: the filter skips nothing before reading. When present it is called once
 *   per disk before reading, and the returned ranges (for example swap or pagefile extents reported
 *   by the guest) are never read. Only whole blocks inside the ranges are skipped.
 * - `classify` missing: every block read is kept.
 */
export interface BlockFilter {
  skipExtents?(disk: SourceDisk): Promise<Extent[]>;
  /** `zero` stores the block as a zero block. Must be pure and fast: it runs on every block. */
  classify?(block: Uint8Array, offset: number): 'keep' | 'zero';
}
