import type { BlockFilter, SkipContext } from '../contracts/block-filter.js';
import type { Extent } from '../contracts/extent.js';
import type { JsonSchema } from '../contracts/plugin.js';
import type { SourceDisk } from '../contracts/source-host.js';
import { findSwapAreas, type SwapAreaFound, type SwapAreaOptions } from '../disk-formats/swap-areas.js';

/**
 * The `swap` block filter: finds Linux swap areas and Windows paging and hibernation files on the
 * disk itself (partition tables, swap headers, NTFS metadata; no guest access) and returns their
 * bytes as skip ranges, so they are neither read nor stored (`core/src/disk-formats/swap-areas.ts`
 * says what is kept: swap headers, hibernation images). A disk it cannot make sense of is read
 * whole: the filter skips only what it positively recognised.
 */
export class SwapBlockFilter implements BlockFilter {
  /** What the last `skipExtents` call found and noted, per disk name (for logs and tests). */
  readonly found = new Map<string, { areas: SwapAreaFound[]; notes: string[] }>();

  constructor(private readonly options: SwapAreaOptions = {}) {}

  async skipExtents(disk: SourceDisk, context: SkipContext): Promise<Extent[]> {
    // A caller of the first contract version passes no context: nothing to look at.
    if (!context) return [];
    const notes: string[] = [];
    const areas = await findSwapAreas((o, l) => context.read(o, l), context.size, this.options, notes);
    this.found.set(disk.name, { areas, notes });
    return mergeInside(areas.flatMap((a) => a.extents), context.size);
  }
}

export const SWAP_FILTER_SCHEMA: JsonSchema = {
  type: 'object',
  properties: {
    linuxSwap: { type: 'boolean', default: true, description: 'skip Linux swap areas (their header page is kept)' },
    windowsPaging: { type: 'boolean', default: true, description: 'skip pagefile.sys and swapfile.sys in NTFS roots' },
    hibernation: { type: 'boolean', default: true, description: 'skip hiberfil.sys unless it holds an image to resume from' },
    swapMatch: { enum: ['signature', 'both', 'type'], default: 'signature', description: 'which partitions are Linux swap: by swap header, by type and header, or by type alone' },
  },
};

/** Sorted, merged, and cut to `[0, size)`: the contract's shape for skip ranges. */
function mergeInside(ranges: Extent[], size: number): Extent[] {
  const out: Extent[] = [];
  for (const r of ranges.sort((a, b) => a.offset - b.offset)) {
    const start = Math.max(0, r.offset);
    const end = Math.min(size, r.offset + r.length);
    if (end <= start) continue;
    const last = out.at(-1);
    if (last && start <= last.offset + last.length) last.length = Math.max(last.length, end - last.offset);
    else out.push({ offset: start, length: end - start });
  }
  return out;
}
