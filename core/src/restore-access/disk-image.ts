/**
 * A disk image read at any offset: one disk of a restore point (`PointReader`), or that point seen
 * through a writable overlay (`OverlayImage`). What `ferry serve` exports over NBD and what the
 * file-level restore (`ferry files`) reads file systems from.
 */
export interface DiskImage {
  /** Bytes. */
  readonly size: number;
  /** The unit the image is stored in: reads aligned to it touch the fewest blocks. */
  readonly blockSize: number;
  /** `length` bytes from `offset` (within `size`, else READ_OUT_OF_RANGE), in new memory. */
  read(offset: number, length: number): Promise<Buffer>;
  /**
   * Which bytes of [offset, offset+length) hold data and which read as zeros without stored data
   * (NBD `base:allocation`: a zero range is a hole that reads as zeros). Consecutive ranges of one
   * kind are merged; the ranges cover the request exactly (clipped to `size`).
   */
  allocation(offset: number, length: number): Allocation[];
  close(): Promise<void>;
}

export interface Allocation {
  offset: number;
  length: number;
  /** True: reads as zeros and no data is stored for it (a zero block of the map, or trimmed). */
  zero: boolean;
}

/** Appends a range to a list of ranges, merging it into the last one when it is of the same kind. */
export function pushAllocation(out: Allocation[], offset: number, length: number, zero: boolean): void {
  const last = out.at(-1);
  if (last && last.zero === zero && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length, zero });
}
