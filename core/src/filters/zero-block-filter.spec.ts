import { runBlockFilterConformance } from '../testing/block-filter-conformance.js';
import { ZeroBlockFilter } from './zero-block-filter.js';

runBlockFilterConformance('zero', () => new ZeroBlockFilter(), { drops: [new Uint8Array(256 * 1024), new Uint8Array(1)] });
