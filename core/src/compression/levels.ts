import type { CompressionLevel } from '../job/job-schema.js';

/**
 * What each job compression level (the names Veeam admins know) uses. The compressor name is
 * recorded in every block; a block that does not shrink is stored with `none`.
 */
export const LEVEL_CODECS: Record<CompressionLevel, { compressor: string; level: number }> = {
  none: { compressor: 'none', level: 0 },
  'dedupe-friendly': { compressor: 'rle', level: 0 },
  optimal: { compressor: 'deflate', level: 1 },
  high: { compressor: 'deflate', level: 6 },
  extreme: { compressor: 'deflate', level: 9 },
};
