import type { BlockFilter } from '../contracts/block-filter.js';
import { isAllZero, zeroCheckFilters } from '../util/zero.js';

/** Stores all-zero blocks as zero blocks (holes are skipped before reading by the data mover). */
export class ZeroBlockFilter implements BlockFilter {
  constructor() {
    zeroCheckFilters.add(this);
  }

  classify(block: Uint8Array): 'keep' | 'zero' {
    return isAllZero(block) ? 'zero' : 'keep';
  }
}
