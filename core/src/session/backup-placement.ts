import type { BackendRequestStats } from '../contracts/repository-backend.js';
import type { SourceDisk, VmDefinition } from '../contracts/source-host.js';
import type { RepositoryProtection, RestorePoint } from '../repository/repository.js';
import type { DiskReport, ReportedError, SessionReport } from '../report/session-report.js';
import type { CopyOutcome, RetentionOutcome, VerifyOutcome } from './session-upkeep.js';
import type { Stage, StageReport } from '../pipe/stage-meter.js';

/**
 * Where a backup session's data movers run: the one session loop (`backup-session.ts`) does
 * inventory, snapshot, disk plan, commit order, release and the report; a placement does what
 * depends on where the source-side and target-side movers are. Two placements exist: in this
 * process (`embedded-backup.ts`) and through `ferry proxy serve` / `ferry repository serve`
 * (`../remote/services/remote-backup.ts`). `runBackup` picks one from the job (`repository.server`).
 *
 * Call order: `open` once; then per VM `listPoints`, `moveDisk` per disk (several at once, within
 * the session's `parallelDisks` slots, across VMs), then `commit` or `discard`; `finish` once after
 * every VM; `figures` for the report; `close` always, also after a failure.
 */
export interface BackupPlacement {
  /**
   * Opens the target side and takes the session's lock on the job's VM chains (held until
   * `finish` or `close`). Returns where restore points go, as the report names it.
   */
  open(session: string): Promise<string>;
  /** The VM's restore points in the repository (the disk plan picks the job's previous one). */
  listPoints(vm: string): Promise<RestorePoint[]>;
  /**
   * Moves one disk: chooses its transport and mode (the disk plan), reads it, sends its records and
   * keeps its block map on the target side until `commit` or `discard`. Never throws: a failure is
   * in the report (`status: 'failed'`) and nothing is kept. Sends the `disk-start`, `disk-progress`
   * and `disk-end` progress events. Stops at the next block once the session's signal aborts.
   */
  moveDisk(vm: string, disk: SourceDisk, previous: RestorePoint | undefined): Promise<MovedDisk>;
  /** Commits the VM's restore point from its kept disks, atomically; checks the lock first. */
  commit(vm: string, point: PointHeader, disks: KeptDisk[]): Promise<RestorePoint>;
  /** Drops kept disks of a VM that gets no point. Never throws. */
  discard(disks: KeptDisk[]): Promise<void>;
  /**
   * After every VM: retention of the VMs that got a point (under the lock), then the lock is
   * released, then the health check of the points committed (`verify.afterBackup`).
   */
  finish(report: SessionReport): Promise<SessionEnd>;
  /** Stage busy times, bottleneck and (remote) reconnects, once every disk has moved. */
  figures(report: SessionReport, durationMs: number): SessionFigures;
  /** An error as the report carries it (a remote placement names a lost service). */
  reportedError(err: unknown): ReportedError;
  /** Releases whatever is still held (the lock after a failure, connections). Never throws. */
  close(): Promise<void>;
}

/** What a VM's restore point records besides its disks. */
export interface PointHeader {
  id: string;
  createdAt: string;
  definition?: VmDefinition;
}

/** A moved disk: its report, and (when it succeeded) what the target side kept for the commit. */
export interface MovedDisk {
  report: DiskReport;
  kept?: KeptDisk;
}

/** A disk whose block map the target side keeps for the VM's commit. */
export interface KeptDisk {
  disk: SourceDisk;
  report: DiskReport;
  /** The placement's handle on the kept map. */
  ref: unknown;
}

export interface SessionEnd {
  retention?: RetentionOutcome;
  verify?: VerifyOutcome;
  protection?: RepositoryProtection;
  copies?: CopyOutcome[];
  /** Object storage backends: requests by kind and bytes (`RepositoryBackend.requestStats`). */
  requests?: BackendRequestStats;
}

export interface SessionFigures {
  stages: StageReport[];
  bottleneck: Stage | null;
  reconnects?: number;
}

/** A disk report before any data moved (also the report of a disk an interrupt kept from starting). */
export function newDiskReport(vm: string, disk: SourceDisk, blockSize: number): DiskReport {
  return {
    vm,
    disk: disk.name,
    status: 'success',
    transport: '',
    transportReason: '',
    mode: 'full',
    modeReason: '',
    sizeBytes: disk.size ?? 0,
    blockSize,
    bytesRead: 0,
    zeroBytesSkipped: 0,
    swapBytesSkipped: 0,
    bytesTransferred: 0,
    bytesWritten: 0,
    blocks: { total: 0, zero: 0, new: 0, deduped: 0, unchanged: 0, healed: 0 },
    durationMs: 0,
    restorePoint: null,
  };
}

/**
 * The manifest's `filtered`: blocks filters stored as zero blocks although they may have held data,
 * so a restore differs from the source there. The built-in `zero` filter drops only blocks of zeros.
 */
export function droppedData(filtered: Record<string, number> = {}): { filtered?: Record<string, number> } {
  const dropped = Object.entries(filtered).filter(([name]) => name !== 'zero');
  return dropped.length ? { filtered: Object.fromEntries(dropped) } : {};
}
