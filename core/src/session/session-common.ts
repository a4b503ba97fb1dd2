import type { PreviousPoint } from '../contracts/source-host.js';
import { FerryError, type ErrorLocation } from '../errors.js';

/** For commands that need the repository itself (verify, prune, gc, unlock) on a job with a repository service. */
export function notHere(server: string, where: ErrorLocation): FerryError {
  return new FerryError('CLI_USAGE', `the job's repository is the repository service at ${server}; run this command on that host with --repository PATH`, where);
}
import { Repository, type RestorePoint } from '../repository/repository.js';
import type { JobRuntime } from './job-runtime.js';
import type { ReportedError, SessionReport } from '../report/session-report.js';

/**
 * What the embedded backup session and the remote one (through the data-mover services) share: the
 * report they start from, how a point is handed to the source host, and how errors are reported.
 */

/** An empty, successful report for a session starting now; `repository` names where points go. */
export function newSessionReport(rt: JobRuntime, started: Date, repository: string): SessionReport {
  return {
    job: rt.spec.job,
    session: Repository.newPointId(started),
    status: 'success',
    startedAt: started.toISOString(),
    finishedAt: '',
    durationMs: 0,
    source: rt.spec.source.host,
    repository,
    compression: rt.spec.storage.compression,
    blockSize: rt.spec.storage.blockSize,
    vms: [],
    disks: [],
    totals: { sizeBytes: 0, bytesRead: 0, zeroBytesSkipped: 0, swapBytesSkipped: 0, bytesTransferred: 0, bytesWritten: 0 },
    stages: [],
    bottleneck: null,
    healedBlocks: 0,
  };
}

/** The source host's view of the job's previous point of a VM (change tracking decides on it). */
export function previousPoint(p: RestorePoint): PreviousPoint {
  return { id: p.id, disks: p.disks.map((d) => ({ name: d.name, sizeBytes: d.sizeBytes, changeTracking: d.changeTracking })) };
}

export function interrupted(where: ErrorLocation): FerryError {
  return new FerryError('SESSION_INTERRUPTED', 'the session was interrupted; this VM gets no restore point', where);
}

/** An error as the session report carries it; anything not coded is INTERNAL with its stack. */
export function errorSummary(err: unknown): ReportedError {
  if (err instanceof FerryError) return { code: err.code, message: err.message, where: err.where };
  return { code: 'INTERNAL', message: err instanceof Error ? (err.stack ?? err.message) : String(err), where: {} };
}
