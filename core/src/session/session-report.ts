import type { ErrorCode, ErrorLocation } from '../errors.js';
import type { Stage, StageReport } from './stage-meter.js';

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
  /** Compressed block bytes sent through the data pipe. */
  bytesTransferred: number;
  /** New block bytes the repository stored (the rest deduplicated). */
  bytesWritten: number;
  /** Block counts: zero, newly stored, deduplicated, and (incremental) carried over unread. */
  blocks: { total: number; zero: number; new: number; deduped: number; unchanged: number };
  durationMs: number;
  /** Restore point id; null when the VM's point was not committed. */
  restorePoint: string | null;
  error?: ReportedError;
}

export interface VmReport {
  vm: string;
  status: 'success' | 'failed';
  restorePoint: string | null;
  error?: ReportedError;
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
  totals: { sizeBytes: number; bytesRead: number; zeroBytesSkipped: number; bytesTransferred: number; bytesWritten: number };
  stages: StageReport[];
  bottleneck: Stage | null;
  /** A session-level failure (before or after the disks), if any. */
  error?: ReportedError;
}

export type ProgressEvent =
  | { type: 'disk-start'; vm: string; disk: string; sizeBytes: number; transport: string }
  | { type: 'disk-progress'; vm: string; disk: string; doneBytes: number; sizeBytes: number }
  | { type: 'disk-end'; report: DiskReport };

/** An error as the report carries it: code, full message, and where it happened. */
export interface ReportedError {
  code: ErrorCode;
  message: string;
  where: ErrorLocation;
}
