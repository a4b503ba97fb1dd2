import type { BackendRequestStats } from '../contracts/repository-backend.js';
import type { ReportedError } from '../errors.js';
import type { PrunedPoint } from '../maintenance/prune.js';
import type { RepositoryProtection } from '../repository/repository.js';
import type { Stage, StageReport } from '../pipe/stage-meter.js';

/** One disk's figures in a session report (`ferry backup --json` prints them under `disks`). */
export interface DiskReport {
  vm: string;
  disk: string;
  status: 'success' | 'failed';
  /** Transport mode that read the disk, and why it was chosen. */
  transport: string;
  transportReason: string;
  mode: 'full' | 'incremental';
  modeReason: string;
  sizeBytes: number;
  blockSize: number;
  /** Bytes read from the source (holes and skipped ranges are not read). */
  bytesRead: number;
  /** Bytes not sent because they were holes, all-zero blocks or filtered out. */
  zeroBytesSkipped: number;
  /**
   * Bytes of swap areas, pagefiles and hibernation files (the filters' skip ranges) that were
   * neither read nor stored; a restore writes zeros there. Counted per block read this run (an
   * incremental run's unchanged blocks do not count).
   */
  swapBytesSkipped: number;
  /** What the filters found before reading (swap areas and paging files skipped or kept, and why), one line each; absent when none. */
  swapNotes?: string[];
  /** Compressed block bytes sent through the data pipe. */
  bytesTransferred: number;
  /** New block bytes the repository stored (the rest deduplicated). */
  bytesWritten: number;
  /**
   * Block counts: zero, newly stored, deduplicated, (incremental) carried over unread, and healed:
   * stored again because every stored copy was known damaged (self-heal; also counted in `new`).
   * `filtered`: of the zero blocks, those each filter (by its `filters:` name) dropped, by `classify`
   * or a `skipExtents` range (embedded sessions; a remote proxy does not report it yet).
   */
  blocks: { total: number; zero: number; new: number; deduped: number; unchanged: number; healed: number; filtered?: Record<string, number> };
  durationMs: number;
  /** Restore point id; null when the VM's point was not committed. */
  restorePoint: string | null;
  error?: ReportedError;
  /** Remote data movers: the proxy that read the disk (`host:port`). */
  proxy?: string;
  /** Remote data movers: times the data pipe dropped and was resumed for this disk. */
  reconnects?: number;
  /** Remote data movers: data blocks the proxy sent a second time after a resume (at most the in-flight window per reconnect). */
  resentBlocks?: number;
  /** Remote data movers: this disk's busy time per stage and its busiest stage. */
  stages?: StageReport[];
  bottleneck?: Stage | null;
}

export interface VmReport {
  vm: string;
  status: 'success' | 'failed';
  restorePoint: string | null;
  error?: ReportedError;
  /** The source host's notes on the VM and its snapshot (disks left out, leftovers cleaned, how it was read). */
  notes?: string[];
  /** Guest processing (`guest:` in the job), present for VMs that have it. */
  guest?: GuestReport;
}

/** The guest processing steps of a session, in the order they run (docs/architecture.md). */
export type GuestStep = 'deploy' | 'preFreeze' | 'freeze' | 'snapshot' | 'thaw' | 'postThaw' | 'skipExtents' | 'postBackup' | 'remove';

/** A VM's guest processing: what ran, how long, and whether the point is application-consistent. */
export interface GuestReport {
  os: string;
  via: string;
  /** Where the runtime ran (`ssh root@db1:22`, `qga unix:/run/vm1-qga.sock`), once deployed. */
  runtime?: string;
  /** `application`: every step up to the thaw succeeded; `crash`: a step failed under `onGuestFailure: continue` (or no freeze). */
  consistency: 'application' | 'crash';
  steps: GuestStepReport[];
  /**
   * From the start of `freeze` to the end of `thaw` (the time guest writes may wait), in ms; null
   * when nothing was frozen.
   */
  freezeWindowMs: number | null;
  /** Per application and step: quiesced, resumed, post-processed. */
  applications: GuestApplicationReport[];
  /** Failed steps under `onGuestFailure: continue`, failed post-backup actions, runtime warnings. */
  warnings: string[];
}

export interface GuestStepReport {
  step: GuestStep;
  status: 'success' | 'failed' | 'skipped';
  durationMs: number;
  detail?: string;
  /** User scripts run in the step: exit code and the last 4 KiB of their output. */
  scripts?: { script: string; exitCode: number | null; output: string; durationMs: number }[];
  error?: ReportedError;
}

export interface GuestApplicationReport {
  name: string;
  step: GuestStep;
  status: 'success' | 'failed' | 'skipped';
  method: string;
  detail?: string;
}

export interface SessionReport {
  job: string;
  session: string;
  status: 'success' | 'failed';
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  source: string;
  repository: string;
  compression: string;
  blockSize: number;
  vms: VmReport[];
  disks: DiskReport[];
  totals: { sizeBytes: number; bytesRead: number; zeroBytesSkipped: number; swapBytesSkipped: number; bytesTransferred: number; bytesWritten: number };
  stages: StageReport[];
  bottleneck: Stage | null;
  /** Damaged blocks this session stored again (self-heal), over all disks. */
  healedBlocks: number;
  /** Remote data movers: data-pipe reconnects over all disks. */
  reconnects?: number;
  /** Restore points retention removed after the session (present when the job has `retention:`). */
  retention?: RetentionOutcome;
  /** Encryption and immutability of the repository, and what its storage enforces. */
  protection?: RepositoryProtection;
  /** The health check after the session (present with `verify: { afterBackup: true }`). */
  verify?: VerifyOutcome;
  /** `copyTo:`: per target repository, the points copied after the session (or why not). */
  copies?: CopyOutcome[];
  /** Object storage (S3): requests sent by kind, retries, bytes, and findings (`notes`). */
  requests?: BackendRequestStats;
  /** A session-level failure (before or after the disks), if any. */
  error?: ReportedError;
}

export type ProgressEvent =
  | { type: 'disk-start'; vm: string; disk: string; sizeBytes: number; transport: string }
  | { type: 'disk-progress'; vm: string; disk: string; doneBytes: number; sizeBytes: number }
  | { type: 'disk-end'; report: DiskReport };

/** A `copyTo:` target after a session: what was copied there, or why it failed (reported, not thrown). */
export interface CopyOutcome {
  to: string;
  points: number;
  blocksTransferred: number;
  bytesTransferred: number;
  error?: ReportedError;
}

/** Retention after a session: the points it removed, or why it failed (reported, not thrown). */
export interface RetentionOutcome {
  removed: PrunedPoint[];
  error?: ReportedError;
}

/** The health check after a session (`verify: { afterBackup: true }`). */
export interface VerifyOutcome {
  status: 'ok' | 'damaged' | 'not run';
  samplePercent: number;
  blocksChecked: number;
  damagedBlocks: number;
  throughputMiBps: number;
  error?: ReportedError;
}

export type { ReportedError };
