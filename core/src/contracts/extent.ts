/** A byte range of a disk. Offsets and lengths are in bytes; `length` > 0. */
export interface Extent {
  offset: number;
  length: number;
}

/**
 * What a range of a disk holds, as far as the transport can tell without reading it.
 * `zero` covers holes, unallocated clusters and ranges the server reports as reading back as zeros.
 */
export interface AllocationExtent extends Extent {
  kind: 'data' | 'zero';
}
