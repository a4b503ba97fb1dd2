/**
 * `@ferry/core/limits`: the block size limits alone, for plugins that need a value from the core on
 * a hot path without loading all of it (a compressor runs in every worker thread, and importing
 * `@ferry/core` there would load the whole core, ~0.15 s per thread, for one constant).
 */
export { DEFAULT_BLOCK_SIZE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from './job/job-schema.js';
