/** The job file's `storage.compression` level names. */
export const COMPRESSION_LEVELS = ['none', 'dedupe-friendly', 'optimal', 'high', 'extreme'] as const;
export type CompressionLevel = (typeof COMPRESSION_LEVELS)[number];

/**
 * What each job compression level (the names Veeam admins know) uses. The compressor name is
 * recorded in every block; a block that does not shrink is stored with `none`. `lz4` and `zstd` come
 * from the workspace plugins compress-lz4 and compress-zstd; `deflate` stays built in so blocks
 * written with it always restore. Chosen by `npm run bench` (docs/performance.md).
 */
export const LEVEL_CODECS: Record<CompressionLevel, { compressor: string; level: number }> = {
  none: { compressor: 'none', level: 0 },
  'dedupe-friendly': { compressor: 'rle', level: 0 },
  optimal: { compressor: 'lz4', level: 0 },
  high: { compressor: 'zstd', level: 3 },
  extreme: { compressor: 'zstd', level: 12 },
};
