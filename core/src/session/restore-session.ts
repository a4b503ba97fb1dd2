import { FerryError, type ErrorLocation } from '../errors.js';
import type { BlockMap } from '../repository/block-map.js';
import { EmbeddedRestore, RESTORE_CONCURRENCY } from './embedded-restore.js';
import type { JobRuntime } from './job-runtime.js';
import type { RestoreSource, RestoreTarget } from './restore-placement.js';
import { openRestoreSink, withTargetState, type RestoreSink } from './restore-sink.js';

export { RESTORE_CONCURRENCY };

export interface RestoreOptions {
  vm: string;
  disk: string;
  /** Restore point id, or `latest`. */
  point: string;
  /** Target file or block device, or a network target a transport can write (`nbd://...`). */
  to: string;
  /**
   * Overwrite a file or block device that exists (`--force`); without it an existing target is
   * refused with RESTORE_TARGET_EXISTS. A network target (NBD export) is always written.
   */
  force?: boolean;
  /** Blocks fetched and written at once (default `RESTORE_CONCURRENCY`; embedded restores). */
  concurrency?: number;
  onProgress?: (doneBytes: number, sizeBytes: number) => void;
}

export interface RestoreReport {
  vm: string;
  disk: string;
  restorePoint: string;
  to: string;
  sizeBytes: number;
  bytesWritten: number;
  zeroBytes: number;
  sparse: boolean;
  durationMs: number;
  /** Restores from a repository service: connections made again after a drop. */
  reconnects?: number;
  /** Restores from a repository service: blocks it sent again after drops (at most its window each). */
  resentBlocks?: number;
}

/**
 * Where a restore's blocks come from, chosen once: the job's repository in this process, or
 * (`repository.server` in the job) the repository service.
 */
export async function restoreSource(rt: JobRuntime, opts: RestoreOptions): Promise<RestoreSource> {
  // The remote source (and the pipe's wire and service modules) loads only for a job that uses it.
  if (rt.spec.remote) return new (await import('./remote-restore.js')).RemoteRestore(rt, rt.spec.remote, opts);
  return new EmbeddedRestore(rt, opts);
}

/**
 * Writes one disk of a restore point to a file, a block device or a transport's target (an NBD
 * export). Every block is checked (CRC-32 of the stored object, its block id against the block map)
 * before it is written; a damaged block stops the restore with its object, disk and offset named.
 * Zero blocks become holes in a regular file, WRITE_ZEROES on a target that has it, and written
 * zeros elsewhere. Success is reported only when every block of the map was written.
 */
export async function restoreDisk(rt: JobRuntime, opts: RestoreOptions): Promise<RestoreReport> {
  return runRestore(rt, await restoreSource(rt, opts), opts);
}

/** The one restore loop, whatever the source. */
export async function runRestore(rt: JobRuntime, source: RestoreSource, opts: RestoreOptions): Promise<RestoreReport> {
  const t0 = performance.now();
  const target = new DiskTarget(rt, opts);
  let figures;
  try {
    try {
      figures = await source.run(target);
      await target.fillZeros();
    } finally {
      await source.close();
    }
  } catch (err) {
    // Every write the source started has settled; the sink now says what the target holds.
    throw withTargetState(err, await target.abandon());
  }
  await target.finish();
  return { ...target.report, ...figures, durationMs: Math.round(performance.now() - t0) };
}

/** The restore's target: opened once the map is known, written block by block. */
class DiskTarget implements RestoreTarget {
  readonly report: RestoreReport;
  private map?: BlockMap;
  private sink?: RestoreSink;
  /** One byte per block, 1 once the block is written. */
  private done = new Uint8Array(0);
  private doneBytes = 0;
  private readonly where: ErrorLocation;

  constructor(
    private readonly rt: JobRuntime,
    private readonly opts: RestoreOptions,
  ) {
    this.where = { vm: opts.vm, disk: opts.disk };
    this.report = { vm: opts.vm, disk: opts.disk, restorePoint: '', to: opts.to, sizeBytes: 0, bytesWritten: 0, zeroBytes: 0, sparse: false, durationMs: 0 };
  }

  async open(point: string, map: BlockMap): Promise<void> {
    if (this.map) throw new FerryError('INTERNAL', 'the restore target was opened twice', this.where);
    this.map = map;
    this.done = new Uint8Array(map.blockCount);
    this.report.restorePoint = point;
    this.report.sizeBytes = map.diskSize;
    this.sink = await openRestoreSink(this.rt, this.opts.to, map.diskSize, this.opts.disk, { force: this.opts.force });
    this.report.to = this.sink.label;
    this.report.sparse = this.sink.sparse;
  }

  async write(i: number, data: Uint8Array): Promise<void> {
    const { map, sink } = this;
    if (!map || !sink) throw new FerryError('INTERNAL', 'a block was written before the restore target was opened', this.where);
    const length = map.lengthOf(i);
    if (data.length !== length) {
      throw new FerryError('REPO_CORRUPT_OBJECT', `block holds ${data.length} bytes, the map expects ${length}`, { ...this.where, offset: i * map.blockSize });
    }
    await sink.writeFresh(i * map.blockSize, data);
    this.done[i] = 1;
    this.report.bytesWritten += length;
    this.doneBytes += length;
    this.opts.onProgress?.(this.doneBytes, map.diskSize);
  }

  written(i: number): boolean {
    return this.done[i] === 1;
  }

  /** After every data block: the zero blocks (holes in a file, WRITE_ZEROES or zeros elsewhere). */
  async fillZeros(): Promise<void> {
    const { map, sink } = this;
    if (!map || !sink) throw new FerryError('INTERNAL', 'the restore source ended without a block map', this.where);
    for (let i = 0; i < map.blockCount; i++) {
      if (map.get(i)) continue;
      const length = map.lengthOf(i);
      await sink.zero(i * map.blockSize, length);
      this.report.zeroBytes += length;
      this.doneBytes += length;
      this.opts.onProgress?.(this.doneBytes, map.diskSize);
    }
  }

  /** Makes the target durable. */
  async finish(): Promise<void> {
    await this.sink!.finish(true);
  }

  /** After a failure: removes a file this restore created, or says what the target holds now. */
  async abandon(): Promise<string | undefined> {
    return this.sink?.finish(false).catch(() => undefined);
  }
}
