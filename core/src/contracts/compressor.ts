/**
 * Compressor contract. The compressor's registered name is recorded in every stored block, so a
 * block written at any level restores with any configuration; a name must never change meaning.
 *
 * Invariants:
 * - `decompress(compress(x, level), x.length)` equals `x` for every input and level.
 * - Output depends only on the input and level (identical input, identical output): dedup and
 *   dedup-friendly storage rely on it.
 * - Both methods are synchronous and free of shared state, so they can run in worker threads.
 * - `decompress` throws when the input is damaged or does not expand to `rawLength` bytes.
 *
 * Optional: `compressInto` writes exactly the bytes `compress` returns into the caller's `out` and
 * returns their length, or 0 when they would not be shorter than `data` or do not fit in `out` (the
 * block is then stored uncompressed). It lets the core reuse one buffer per block instead of
 * allocating one per call. Missing: the core calls `compress` and copies.
 * Optional: `decompressInto` is `decompress` writing the `rawLength` bytes to the start of `out`
 * (at least that long), with the same checks. Missing: the core calls `decompress` and copies.
 */
export interface Compressor {
  compress(data: Uint8Array, level: number): Uint8Array;
  compressInto?(data: Uint8Array, level: number, out: Uint8Array): number;
  decompress(data: Uint8Array, rawLength: number): Uint8Array;
  decompressInto?(data: Uint8Array, rawLength: number, out: Uint8Array): void;
}
