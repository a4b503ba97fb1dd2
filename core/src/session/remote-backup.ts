import type { SourceDisk } from '../contracts/source-host.js';
import { FerryError, type ErrorLocation } from '../errors.js';
import type { RestorePoint } from '../repository/repository.js';
import { droppedData, newDiskReport, type BackupPlacement, type KeptDisk, type MovedDisk, type PointHeader, type SessionEnd, type SessionFigures } from './backup-placement.js';
import type { JobRuntime } from './job-runtime.js';
import type { DiskReport, ProgressEvent, ReportedError, SessionReport } from '../report/session-report.js';
import type { RetentionOutcome, VerifyOutcome } from './session-upkeep.js';
import type { Stage } from '../pipe/stage-meter.js';
import { connect, type PeerAuth } from '../remote/wire/index.js';
import { interrupted } from './session-common.js';
import { chooseBase } from '../plan/disk-plan.js';
import { ControlChannel, errorToWire, stagesFromBusy, type CommitDisk, type DiskOrder, type DiskOutcome } from '../remote/services/protocol.js';

/** The job's remote parts (`repository: { server }`, `proxies`, `certs`). */
export interface RemoteSpec {
  server: string;
  proxies: string[];
  certs: string;
}

export { notHere } from './session-common.js';

/** How the backup server authenticates to the repository service. */
export function serverAuth(remote: RemoteSpec): PeerAuth {
  return { kind: 'certs', dir: remote.certs, role: 'server' };
}

/** Opens a control connection to the job's repository service. */
export async function connectRepositoryService(remote: RemoteSpec, signal?: AbortSignal): Promise<ControlChannel> {
  const conn = await connect({ address: remote.server, auth: serverAuth(remote), expectRole: 'repository', timeoutMs: 10_000, signal }).catch((err) => {
    throw err instanceof FerryError ? err.at({ host: remote.server }) : err;
  });
  return new ControlChannel(conn, { host: remote.server });
}

/**
 * The data movers as services: proxies read, the repository service writes. The session loop hands
 * every disk to the repository service with the proxy that should read it (round robin over the
 * job's proxies) and asks the service to commit a VM's point once all its disks arrived. VM data
 * never passes through this process.
 */
export class RemoteBackup implements BackupPlacement {
  private control?: ControlChannel;
  private nextProxy = 0;
  private session = '';
  private readonly onAbort = (): void => void this.control?.request('session.abort', {}).catch(() => undefined);

  constructor(
    private readonly rt: JobRuntime,
    private readonly remote: RemoteSpec,
    private readonly onProgress: (e: ProgressEvent) => void,
    private readonly signal?: AbortSignal,
  ) {}

  async open(session: string): Promise<string> {
    const rt = this.rt;
    if (this.remote.proxies.length === 0) {
      throw new FerryError('JOB_INVALID', 'a job with repository.server needs at least one proxy (proxies: [ { address: host:port } ])', rt.jobFile.where(['proxies']));
    }
    // Ctrl-C/SIGTERM: the service stops its data pipes and refuses later commits; the connection
    // stays open so a commit already under way is answered and reported truthfully.
    this.signal?.addEventListener('abort', this.onAbort, { once: true });
    this.session = session;
    this.control = await connectRepositoryService(this.remote, this.signal);
    const opened = await this.control.request('session.open', {
      job: rt.spec.job,
      session,
      vms: rt.spec.source.vms.map((v) => v.name),
    });
    return `${opened.location} (repository service ${this.remote.server})`;
  }

  async listPoints(vm: string): Promise<RestorePoint[]> {
    return (await this.channel().request('points.list', { vm })).points;
  }

  async moveDisk(vm: string, disk: SourceDisk, previous: RestorePoint | undefined): Promise<MovedDisk> {
    const t0 = performance.now();
    const proxy = this.remote.proxies[this.nextProxy++ % this.remote.proxies.length];
    const blockSize = this.rt.spec.storage.blockSize;
    const report: DiskReport = { ...newDiskReport(vm, disk, blockSize), proxy, reconnects: 0 };
    const where: ErrorLocation = { vm, disk: disk.name };
    let outcome: DiskOutcome | undefined;
    try {
      this.onProgress({ type: 'disk-start', vm, disk: disk.name, sizeBytes: disk.size ?? 0, transport: `${this.rt.spec.transport} via proxy ${proxy}` });
      const codec = this.rt.spec.storage.compressor;
      const order: DiskOrder = {
        session: this.session,
        vm,
        disk,
        proxy,
        transport: this.rt.spec.transport,
        transportOptions: this.rt.spec.transportOptions,
        filters: this.rt.spec.filters,
        filterOptions: this.rt.spec.filterOptions,
        compressor: { name: codec.name, level: codec.level },
        blockSize,
        ...baseOf(disk, previous, blockSize),
      };
      outcome = await this.channel().request('disk.receive', { order }, {
        onMessage: (m) => {
          if (m.type !== 'event') return;
          const done = Number(m.header?.doneBytes) || 0;
          this.onProgress({ type: 'disk-progress', vm, disk: disk.name, doneBytes: done, sizeBytes: Math.max(done, disk.size ?? 0) });
        },
      });
      const { info, summary: src, target } = outcome;
      Object.assign(report, {
        transport: info.transport,
        transportReason: `proxy ${proxy}: ${info.transportReason}`,
        mode: info.mode,
        modeReason: info.modeReason,
        sizeBytes: info.sizeBytes,
        bytesRead: src.bytesRead,
        zeroBytesSkipped: src.zeroBytesSkipped,
        swapBytesSkipped: src.swapBytesSkipped ?? 0,
        bytesTransferred: src.bytesTransferred,
        bytesWritten: target.bytesWritten,
        reconnects: outcome.reconnects,
        resentBlocks: src.resentBlocks,
        stages: outcome.stages,
        bottleneck: outcome.bottleneck,
      });
      report.blocks = {
        total: outcome.blocks,
        zero: target.blocksZero,
        new: target.blocksNew,
        deduped: target.blocksDeduped,
        unchanged: target.blocksUnchanged,
        healed: target.healed,
        filtered: { ...src.filtered },
      };
      if (src.swapNotes?.length) report.swapNotes = src.swapNotes;
    } catch (err) {
      report.status = 'failed';
      report.error = this.reportedError(this.signal?.aborted ? interrupted(where) : err instanceof FerryError ? err.at(where) : err);
      outcome = undefined;
    }
    report.durationMs = Math.round(performance.now() - t0);
    this.onProgress({ type: 'disk-end', report });
    return { report, ...(outcome && { kept: { disk, report, ref: outcome } }) };
  }

  async commit(vm: string, point: PointHeader, disks: KeptDisk[]): Promise<RestorePoint> {
    const received: CommitDisk[] = disks.map(({ disk, ref }) => {
      const outcome = ref as DiskOutcome;
      return {
        diskId: outcome.diskId,
        name: disk.name,
        zeroBlocks: outcome.target.blocksZero,
        ...droppedData(outcome.summary.filtered),
        transport: outcome.info.transport,
        mode: outcome.info.mode,
        ...(disk.changeTracking && { changeTracking: disk.changeTracking }),
      };
    });
    const res = await this.channel().request('point.commit', {
      vm,
      point: { id: point.id, job: this.rt.spec.job, session: point.id, createdAt: point.createdAt, ...(point.definition && { definition: point.definition }) },
      disks: received,
    });
    return res.point;
  }

  async discard(disks: KeptDisk[]): Promise<void> {
    if (disks.length === 0) return;
    await this.control?.request('point.discard', { diskIds: disks.map((d) => (d.ref as DiskOutcome).diskId) }).catch(() => undefined);
  }

  async finish(report: SessionReport): Promise<SessionEnd> {
    const rt = this.rt;
    const ended = await this.channel().request('session.end', {
      vms: report.vms.filter((v) => v.status === 'success' && v.restorePoint).map((v) => v.vm),
      ...(rt.spec.retention && { retention: rt.spec.retention }),
      ...(rt.spec.verify.afterBackup && { verify: { samplePercent: rt.spec.verify.samplePercent } }),
      points: report.vms.filter((v) => v.restorePoint).map((v) => ({ vm: v.vm, id: v.restorePoint! })),
    });
    return { ...(ended.retention && { retention: ended.retention }), ...(ended.verify && { verify: ended.verify }) };
  }

  /** Busy times measured in the proxies and the repository service, added over the disks. */
  figures(report: SessionReport, durationMs: number): SessionFigures {
    const busy: Partial<Record<Stage, number>> = {};
    for (const d of report.disks) for (const s of d.stages ?? []) busy[s.stage] = (busy[s.stage] ?? 0) + s.busyMs;
    return { ...stagesFromBusy(busy, durationMs), reconnects: report.disks.reduce((n, d) => n + (d.reconnects ?? 0), 0) };
  }

  /** Errors from the services keep their code; a lost repository service is named as such. */
  reportedError(err: unknown): ReportedError {
    if (err instanceof FerryError && /^PIPE_(CLOSED|TIMEOUT)$/.test(err.code)) {
      return { code: 'REMOTE_SESSION_LOST', message: `REMOTE_SESSION_LOST: the repository service went away (${err.message}); nothing of this session was committed after that`, where: err.where };
    }
    const e = errorToWire(err);
    return err instanceof FerryError ? { ...e, message: err.message } : e;
  }

  /** Closing the control connection without `session.end` leaves nothing committed and frees the lock. */
  async close(): Promise<void> {
    this.signal?.removeEventListener('abort', this.onAbort);
    await this.control?.close();
  }

  private channel(): ControlChannel {
    if (!this.control) throw new FerryError('INTERNAL', 'the remote placement was used before it was opened');
    return this.control;
  }
}

/** Stage 1 of the disk plan: what the server decides without the open disk or the repository. */
function baseOf(disk: SourceDisk, previous: RestorePoint | undefined, blockSize: number): Pick<DiskOrder, 'base' | 'fullReason'> {
  const choice = chooseBase(disk, previous, blockSize);
  return 'base' in choice ? { base: choice.base } : { fullReason: choice.fullReason };
}
