import type { BlockMap } from '../repository/block-map.js';

/**
 * Where a restore's blocks come from: the job's repository read in this process
 * (`embedded-restore.ts`), or a repository service streaming them (`../remote/services/remote-restore.ts`).
 * The one restore loop (`restore-session.ts`) owns the target: it opens it once the block map is
 * known, checks each block's length, writes it, fills the zero blocks, and makes the target durable
 * or says what it holds after a failure. `restoreDisk` picks the source from the job.
 */
export interface RestoreSource {
  /**
   * Delivers one disk of a point: `target.open` once, before any block, then `target.write` for
   * every data block of the map (any order, several at once; decoded and checked against the map's
   * block id). Resolves only when every data block was written, or rejects; every write it started
   * has settled either way. Resuming after a dropped connection is the source's business.
   */
  run(target: RestoreTarget): Promise<RestoreFigures>;
  /** Releases what the source holds (a lock, connections, worker threads). Never throws. */
  close(): Promise<void>;
}

export interface RestoreTarget {
  /** Opens the target for the point's block map (once). */
  open(point: string, map: BlockMap): Promise<void>;
  /** Writes data block `i`; `data` may be reused by the caller once this resolves. */
  write(i: number, data: Uint8Array): Promise<void>;
  /** Whether block `i` was written already (a resumed stream skips it). */
  written(i: number): boolean;
}

/** Figures only a source knows (remote: connections made again, blocks sent twice). */
export interface RestoreFigures {
  reconnects?: number;
  resentBlocks?: number;
}
