import type { SourceDisk } from '../contracts/source-host.js';
import type { DiskHandle } from '../contracts/transport.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import type { BlockRecord } from '../pipe/block-record.js';
import { guardHandle } from '../pipe/guarded-handle.js';
import { SourceMover, type SourceCounters, type SourceMoverOptions } from '../pipe/source-mover.js';
import { TargetMover, type TargetCounters } from '../pipe/target-mover.js';
import type { BlockMap } from '../repository/block-map.js';
import type { Repository, RestorePoint, RestorePointDisk } from '../repository/repository.js';
import type { RepositoryLock } from '../repository/repository-lock.js';
import { droppedData, newDiskReport, type BackupPlacement, type KeptDisk, type MovedDisk, type PointHeader, type SessionEnd, type SessionFigures } from './backup-placement.js';
import { chooseTransport, planMode, skipContext, skipExtents, type TransportSource } from '../plan/disk-plan.js';
import type { JobRuntime } from './job-runtime.js';
import { errorSummary, interrupted } from './session-common.js';
import type { ProgressEvent, ReportedError, SessionReport } from '../report/session-report.js';
import { copyAfterSession, lockSession, retentionAfterSession, verifyAfterSession } from './session-upkeep.js';
import { newStageMeters, stageReport, type StageMeters } from '../pipe/stage-meter.js';

interface Opened {
  repo: Repository;
  /** Held on the job's VM chains from `open` to `finish`; checked before each commit. */
  lock: RepositoryLock;
  mover: SourceMoverOptions;
  target: TargetMover;
  /** The codec's busy time when the session started (its pool is shared by the job). */
  poolBusyBefore: number;
}

/**
 * Both data movers in this process, on the two sides of an in-memory pipe: the source-side mover
 * reads each disk through the job's transport, the target-side mover writes the job's repository.
 */
export class EmbeddedBackup implements BackupPlacement {
  private readonly meters: StageMeters = newStageMeters();
  private opened?: Opened;
  private released = false;

  constructor(
    private readonly rt: JobRuntime,
    private readonly onProgress: (e: ProgressEvent) => void,
    private readonly signal?: AbortSignal,
  ) {}

  async open(session: string): Promise<string> {
    const rt = this.rt;
    const repo = await rt.repository({ create: true, writeMeter: this.meters['target write'] });
    const lock = await lockSession(repo, rt, session);
    const codec = rt.spec.storage.compressor;
    const mover: SourceMoverOptions = {
      blockSize: rt.spec.storage.blockSize,
      compressor: { name: codec.name, level: codec.level },
      codec: await rt.codec(),
      // embedded pipe: the source asks the repository directly before compressing a block
      isKnown: (hash) => repo.blocks.has(hash),
      filters: await rt.filters(),
      // the target mover copies each new block into its pack before asking for the next
      lendBuffers: true,
      // holes and unchanged ranges as one record each: no record, promise and progress event per block
      runs: true,
    };
    const poolBusyBefore = (mover.codec as { busyMs?: number }).busyMs ?? 0;
    this.opened = { repo, lock, mover, target: new TargetMover(repo, { trustedSource: true }), poolBusyBefore };
    return repo.backend.location;
  }

  listPoints(vm: string): Promise<RestorePoint[]> {
    return this.parts().repo.listPoints(vm);
  }

  async moveDisk(vm: string, disk: SourceDisk, previous: RestorePoint | undefined): Promise<MovedDisk> {
    const s = this.parts();
    const t0 = performance.now();
    const src: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
    const dst: TargetCounters = { bytesWritten: 0, blocksNew: 0, blocksDeduped: 0, blocksZero: 0, blocksUnchanged: 0 };
    const report = newDiskReport(vm, disk, s.mover.blockSize);
    const where: ErrorLocation = { vm, disk: disk.name };
    let handle: DiskHandle | undefined;
    let map: BlockMap | undefined;
    const healedBefore = s.repo.blocks.healed;
    const swapNotes: string[] = [];
    try {
      const chosen = await chooseTransport(this.rt.spec.transport, disk, this.transports(), where);
      report.transport = chosen.name;
      report.transportReason = chosen.reason;
      handle = guardHandle(
        await chosen.transport.open(disk).catch((err) => {
          throw pluginError(err, this.rt.plugins.providerOf('transport', chosen.name), 'open', where);
        }),
        this.rt.plugins.providerOf('transport', chosen.name),
        where,
      );
      report.sizeBytes = handle.size;
      report.blocks.total = Math.ceil(handle.size / s.mover.blockSize);
      this.onProgress({ type: 'disk-start', vm, disk: disk.name, sizeBytes: handle.size, transport: chosen.name });
      const skip = await skipExtents(s.mover.filters, disk, where, skipContext(handle, swapNotes));
      const plan = await planMode(disk, previous, s.mover.blockSize, s.repo, handle);
      report.mode = plan.mode;
      report.modeReason = plan.reason;
      const mover = new SourceMover(s.mover, this.meters);
      const changed = plan.mode === 'incremental' ? plan.changed : undefined;
      const records = this.withProgress(mover.blocks(handle, skip, src, changed), vm, disk.name, handle.size);
      const header = { vm, disk: disk.name, sizeBytes: handle.size, blockSize: s.mover.blockSize };
      map = await s.target.receiveDisk(header, records, dst, plan.base);
    } catch (err) {
      report.status = 'failed';
      report.error = errorSummary(err instanceof FerryError ? err.at(where) : err);
      map = undefined;
    } finally {
      await handle?.close().catch(() => undefined);
    }
    const { filtered, skippedBytes, ...read } = src;
    Object.assign(report, read, { swapBytesSkipped: skippedBytes ?? 0, bytesWritten: dst.bytesWritten, durationMs: Math.round(performance.now() - t0) });
    report.blocks = {
      total: report.blocks.total,
      zero: dst.blocksZero,
      new: dst.blocksNew,
      deduped: dst.blocksDeduped,
      unchanged: dst.blocksUnchanged,
      healed: s.repo.blocks.healed - healedBefore,
      filtered: { ...filtered },
    };
    if (swapNotes.length) report.swapNotes = swapNotes;
    this.onProgress({ type: 'disk-end', report });
    return { report, ...(map && { kept: { disk, report, ref: map } }) };
  }

  async commit(vm: string, point: PointHeader, disks: KeptDisk[]): Promise<RestorePoint> {
    const s = this.parts();
    const maps = disks.map((d) => d.ref as BlockMap);
    const pointDisks = disks.map((d, i) => ({ ...pointDisk(d.report, maps[i]), ...(d.disk.changeTracking && { changeTracking: d.disk.changeTracking }) }));
    await s.lock.assertHeld();
    return s.repo.commitPoint({ ...point, job: this.rt.spec.job, vm, session: point.id, disks: pointDisks as RestorePointDisk[] }, maps);
  }

  async discard(): Promise<void> {
    // The maps are in this process's memory: nothing to drop elsewhere.
  }

  async finish(report: SessionReport): Promise<SessionEnd> {
    const s = this.parts();
    const retention = await retentionAfterSession(this.rt, s.repo, s.lock, report);
    const protection = s.repo.protection();
    const requests = s.repo.backend.raw.requestStats?.();
    await this.release();
    // After the release: the health check takes its own lock and must not hold up the next backup.
    const verify = await verifyAfterSession(this.rt, s.repo, s.mover.codec, report);
    const copies = await copyAfterSession(this.rt, s.repo, s.mover.codec, report);
    return { ...(retention && { retention }), ...(verify && { verify }), ...(copies && { copies }), protection, ...(requests && { requests }) };
  }

  figures(_report: SessionReport, durationMs: number): SessionFigures {
    const pool = this.opened?.mover.codec as { busyMs?: number; threads?: number } | undefined;
    if (pool?.busyMs !== undefined && pool.threads) this.meters.processing.setMeasured((pool.busyMs - this.opened!.poolBusyBefore) / pool.threads);
    return stageReport(this.meters, durationMs);
  }

  reportedError(err: unknown): ReportedError {
    return errorSummary(err);
  }

  async close(): Promise<void> {
    await this.release().catch(() => undefined);
  }

  private async release(): Promise<void> {
    if (this.released || !this.opened) return;
    this.released = true;
    await this.opened.lock.release();
  }

  private parts(): Opened {
    if (!this.opened) throw new FerryError('INTERNAL', 'the embedded placement was used before it was opened');
    return this.opened;
  }

  /** The job's transports, as the disk plan picks among them. */
  private transports(): TransportSource {
    const rt = this.rt;
    return {
      available: () => rt.plugins.available('transport').map((t) => t.name),
      create: (name) => rt.transport(name),
      providerOf: (name) => rt.plugins.providerOf('transport', name),
    };
  }

  private async *withProgress(records: AsyncIterable<BlockRecord>, vm: string, disk: string, sizeBytes: number): AsyncGenerator<BlockRecord> {
    let done = 0;
    for await (const r of records) {
      if (this.signal?.aborted) throw interrupted({ vm, disk, offset: r.index * this.parts().mover.blockSize });
      done += r.length;
      this.onProgress({ type: 'disk-progress', vm, disk, doneBytes: done, sizeBytes });
      yield r;
    }
  }
}

function pointDisk(
  r: { disk: string; blocks: { zero: number; filtered?: Record<string, number> }; transport: string; mode: 'full' | 'incremental' },
  map: BlockMap,
): Omit<RestorePointDisk, 'map' | 'mapSha256'> {
  return {
    name: r.disk,
    sizeBytes: map.diskSize,
    blockSize: map.blockSize,
    blocks: map.blockCount,
    zeroBlocks: r.blocks.zero,
    transport: r.transport,
    mode: r.mode,
    ...droppedData(r.blocks.filtered),
  };
}
