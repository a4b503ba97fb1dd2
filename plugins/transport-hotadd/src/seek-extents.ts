import type { AllocationExtent } from '@ferry/core/plugin';
import type { SeekAddon } from './seek-addon.js';

/** Bounds one reply for a badly fragmented image; the caller asks again for the remainder. */
const MAX_EXTENTS = 1024;

/** lseek errors that mean "this file system or device cannot tell holes apart", not an I/O failure. */
const NO_HOLE_SUPPORT = new Set(['EINVAL', 'EOPNOTSUPP', 'ENOTSUP']);

/**
 * Allocation of `[offset, end)` of an open file, found with SEEK_DATA / SEEK_HOLE without reading a
 * byte. Holes are `zero`. Where holes cannot be told apart (EINVAL, EOPNOTSUPP) the rest of the range
 * is `data`: reading zeros costs time, calling data a hole would lose it. Other lseek failures throw.
 * Extents are in order, without gaps, starting at `offset` and ending at or before `end`.
 */
export function seekExtents(addon: SeekAddon, fd: number, offset: number, end: number): AllocationExtent[] {
  const out: AllocationExtent[] = [];
  let pos = offset;
  while (pos < end && out.length < MAX_EXTENTS) {
    let next: { kind: AllocationExtent['kind']; until: number };
    try {
      next = nextExtent(addon, fd, pos);
    } catch (err) {
      if (!NO_HOLE_SUPPORT.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
      next = { kind: 'data', until: end };
    }
    const until = Math.min(end, next.until);
    append(out, { offset: pos, length: until - pos, kind: next.kind });
    pos = until;
  }
  return out;
}

/** What starts at `pos` and where it ends (Infinity: at the end of the file). */
function nextExtent(addon: SeekAddon, fd: number, pos: number): { kind: AllocationExtent['kind']; until: number } {
  const data = addon.seek(fd, pos, addon.SEEK_DATA);
  if (data === -1) return { kind: 'zero', until: Infinity };
  if (data > pos) return { kind: 'zero', until: data };
  const hole = addon.seek(fd, pos, addon.SEEK_HOLE);
  // A hole at or before `pos` right after data was found there cannot happen on an unchanging image;
  // if it does, claim data rather than loop forever or skip bytes.
  return { kind: 'data', until: hole > pos ? hole : Infinity };
}

function append(out: AllocationExtent[], extent: AllocationExtent): void {
  const last = out.at(-1);
  if (last && last.kind === extent.kind && last.offset + last.length === extent.offset) last.length += extent.length;
  else out.push(extent);
}
