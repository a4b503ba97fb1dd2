import type { SessionInfo, SourceDisk, SourceHost, VmInventory, VmSnapshot } from '../contracts/source-host.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import type { RestorePoint } from '../repository/repository.js';
import type { BackupOptions } from './backup-session.js';
import type { JobRuntime } from './job-runtime.js';
import type { DiskReport, ProgressEvent, ReportedError, SessionReport, VmReport } from '../report/session-report.js';
import type { RetentionOutcome, VerifyOutcome } from './session-upkeep.js';
import type { Stage } from '../pipe/stage-meter.js';
import { connect, type PeerAuth } from '../remote/wire/index.js';
import { mapInOrder } from './disk-slots.js';
import { interrupted, newSessionReport, previousPoint } from './session-common.js';
import { chooseBase, previousOf } from '../plan/disk-plan.js';
import { ControlChannel, errorToWire, stagesFromBusy, type CommitDisk, type DiskOrder, type DiskOutcome } from '../remote/services/protocol.js';

/** The job's remote parts (`repository: { server }`, `proxies`, `certs`). */
export interface RemoteSpec {
  server: string;
  proxies: string[];
  certs: string;
}

interface Parts {
  rt: JobRuntime;
  remote: RemoteSpec;
  sessionId: string;
  host: SourceHost;
  control: ControlChannel;
  onProgress: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Round robin over the job's proxies. */
  nextProxy: number;
}

/** For commands that need the repository itself (verify, prune, gc, unlock) on a job with a repository service. */
export function notHere(server: string, where: ErrorLocation): FerryError {
  return new FerryError('CLI_USAGE', `the job's repository is the repository service at ${server}; run this command on that host with --repository PATH`, where);
}

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
 * A backup session whose data movers are services: the backup server snapshots each VM through its
 * source host, hands every disk to the repository service with the proxy that should read it, and
 * asks the service to commit the VM's point once all its disks arrived. VM data never passes
 * through this process. Same report, same guarantees as the embedded session.
 */
export async function runRemoteBackup(rt: JobRuntime, remote: RemoteSpec, opts: BackupOptions = {}): Promise<SessionReport> {
  const started = new Date();
  const report = newSessionReport(rt, started, `ferry://${remote.server}`);

  let control: ControlChannel | undefined;
  // Ctrl-C/SIGTERM: the service stops its data pipes and refuses later commits; the connection stays
  // open so a commit already under way is answered and reported truthfully.
  const onAbort = (): void => void control?.request('session.abort').catch(() => undefined);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    if (remote.proxies.length === 0) {
      throw new FerryError('JOB_INVALID', 'a job with repository.server needs at least one proxy (proxies: [ { address: host:port } ])', rt.jobFile.where(['proxies']));
    }
    const host = await rt.sourceHost();
    report.source = host.label;
    control = await connectRepositoryService(remote, opts.signal);
    const opened = await control.request<{ location: string }>('session.open', {
      job: rt.spec.job,
      session: report.session,
      vms: rt.spec.source.vms.map((v) => v.name),
    });
    report.repository = `${opened.location} (repository service ${remote.server})`;
    const parts: Parts = { rt, remote, sessionId: report.session, host, control, onProgress: opts.onProgress ?? (() => undefined), signal: opts.signal, nextProxy: 0 };
    const inventory = await host.inventory(rt.spec.source.vms).catch((err) => {
      throw pluginError(err, rt.plugins.providerOf('source-host', rt.spec.source.host), 'inventory', { host: host.label });
    });
    for (const vm of inventory) {
      if (opts.signal?.aborted) {
        report.vms.push({ vm: vm.name, status: 'failed', restorePoint: null, error: summary(interrupted({ vm: vm.name })) });
        continue;
      }
      const { vmReport, disks } = await backupVm(parts, vm);
      report.vms.push(vmReport);
      report.disks.push(...disks);
    }
    const ended = await control.request<{ retention?: RetentionOutcome; verify?: VerifyOutcome }>('session.end', {
      vms: report.vms.filter((v) => v.status === 'success' && v.restorePoint).map((v) => v.vm),
      ...(rt.spec.retention && { retention: rt.spec.retention }),
      ...(rt.spec.verify.afterBackup && { verify: { samplePercent: rt.spec.verify.samplePercent } }),
      points: report.vms.filter((v) => v.restorePoint).map((v) => ({ vm: v.vm, id: v.restorePoint! })),
    });
    if (ended.retention) report.retention = ended.retention;
    if (ended.verify) report.verify = ended.verify;
  } catch (err) {
    report.error = summary(opts.signal?.aborted ? interrupted({}) : err);
  } finally {
    opts.signal?.removeEventListener('abort', onAbort);
    await control?.close();
  }
  const finished = new Date();
  report.finishedAt = finished.toISOString();
  report.durationMs = finished.getTime() - started.getTime();
  for (const d of report.disks) {
    for (const k of Object.keys(report.totals) as (keyof SessionReport['totals'])[]) report.totals[k] += d[k];
  }
  const busy: Partial<Record<Stage, number>> = {};
  for (const d of report.disks) for (const s of d.stages ?? []) busy[s.stage] = (busy[s.stage] ?? 0) + s.busyMs;
  Object.assign(report, stagesFromBusy(busy, report.durationMs));
  report.healedBlocks = report.disks.reduce((n, d) => n + d.blocks.healed, 0);
  report.reconnects = report.disks.reduce((n, d) => n + (d.reconnects ?? 0), 0);
  if (report.verify?.status === 'damaged') report.error ??= report.verify.error;
  if (report.error || report.vms.some((v) => v.status === 'failed')) report.status = 'failed';
  return report;
}

async function backupVm(s: Parts, vm: VmInventory): Promise<{ vmReport: VmReport; disks: DiskReport[] }> {
  const vmReport: VmReport = { vm: vm.name, status: 'success', restorePoint: null };
  const reports: DiskReport[] = [];
  const received: CommitDisk[] = [];
  let snapshot: VmSnapshot | undefined;
  const provider = s.rt.plugins.providerOf('source-host', s.rt.spec.source.host);
  try {
    let disks = vm.disks;
    const { points } = await s.control.request<{ points: RestorePoint[] }>('points.list', { vm: vm.name });
    const previous = previousOf(points, s.rt.spec.job);
    if (s.host.snapshot) {
      const info: SessionInfo = { job: s.rt.spec.job, sessionId: s.sessionId, previous: previous && previousPoint(previous) };
      snapshot = await s.host.snapshot(vm, info).catch((err) => {
        throw pluginError(err, provider, 'snapshot', { host: s.host.label, vm: vm.name });
      });
      disks = snapshot.disks;
    }
    // `parallelDisks` of a VM's disks at once (spread over the proxies); reports in disk order.
    const results = await mapInOrder(disks, s.rt.spec.parallelDisks, async (disk) => {
      if (s.signal?.aborted) return { report: failedReport(s, vm.name, disk, interrupted({ vm: vm.name, disk: disk.name })) };
      return backupDisk(s, vm.name, disk, previous);
    });
    for (const [i, { report, outcome }] of results.entries()) {
      const disk = disks[i];
      reports.push(report);
      if (outcome) {
        received.push({
          diskId: outcome.diskId,
          name: disk.name,
          zeroBlocks: outcome.target.blocksZero,
          transport: outcome.info.transport,
          mode: outcome.info.mode,
          ...(disk.changeTracking && { changeTracking: disk.changeTracking }),
        });
      }
    }
    const failed = reports.find((r) => r.status === 'failed');
    if (failed?.error?.code === 'SESSION_INTERRUPTED') throw interrupted({ vm: vm.name, disk: failed.disk });
    if (failed) throw new FerryError('BACKUP_DISK_FAILED', `disk ${failed.disk} failed: ${failed.error?.message}`, { vm: vm.name });
    await snapshot?.check?.().catch((err) => {
      throw pluginError(err, provider, 'check', { host: s.host.label, vm: vm.name });
    });
    if (s.signal?.aborted) throw interrupted({ vm: vm.name });
    const createdAt = new Date().toISOString();
    const { point } = await s.control.request<{ point: RestorePoint }>('point.commit', {
      vm: vm.name,
      point: { id: s.sessionId, job: s.rt.spec.job, session: s.sessionId, createdAt },
      disks: received,
    });
    vmReport.restorePoint = point.id;
    for (const r of reports) r.restorePoint = point.id;
  } catch (err) {
    vmReport.status = 'failed';
    vmReport.error = summary(err);
    if (received.length) await s.control.request('point.discard', { diskIds: received.map((d) => d.diskId) }).catch(() => undefined);
  } finally {
    if (snapshot) {
      await snapshot.release(vmReport.status).catch((err) => {
        vmReport.status = 'failed';
        vmReport.error ??= summary(pluginError(err, provider, 'release', { vm: vm.name }));
      });
    }
  }
  return { vmReport, disks: reports };
}

function failedReport(s: Parts, vm: string, disk: SourceDisk, err: FerryError): DiskReport {
  return { ...newReport(s, vm, disk, ''), status: 'failed', error: summary(err) };
}

function newReport(s: Parts, vm: string, disk: SourceDisk, proxy: string): DiskReport {
  return {
    vm,
    disk: disk.name,
    status: 'success',
    transport: '',
    transportReason: '',
    mode: 'full',
    modeReason: '',
    sizeBytes: disk.size ?? 0,
    blockSize: s.rt.spec.storage.blockSize,
    bytesRead: 0,
    zeroBytesSkipped: 0,
    bytesTransferred: 0,
    bytesWritten: 0,
    blocks: { total: 0, zero: 0, new: 0, deduped: 0, unchanged: 0, healed: 0 },
    durationMs: 0,
    restorePoint: null,
    proxy,
    reconnects: 0,
  };
}

async function backupDisk(s: Parts, vm: string, disk: SourceDisk, previous?: RestorePoint): Promise<{ report: DiskReport; outcome?: DiskOutcome }> {
  const t0 = performance.now();
  const proxy = s.remote.proxies[s.nextProxy++ % s.remote.proxies.length];
  const blockSize = s.rt.spec.storage.blockSize;
  const report = newReport(s, vm, disk, proxy);
  const where: ErrorLocation = { vm, disk: disk.name };
  let outcome: DiskOutcome | undefined;
  try {
    s.onProgress({ type: 'disk-start', vm, disk: disk.name, sizeBytes: disk.size ?? 0, transport: `${s.rt.spec.transport} via proxy ${proxy}` });
    const codec = s.rt.spec.storage.compressor;
    const order: DiskOrder = {
      session: s.sessionId,
      vm,
      disk,
      proxy,
      transport: s.rt.spec.transport,
      filters: s.rt.spec.filters,
      compressor: { name: codec.name, level: codec.level },
      blockSize,
      ...baseOf(disk, previous, blockSize),
    };
    outcome = await s.control.request<DiskOutcome>('disk.receive', { order }, {
      onMessage: (m) => {
        if (m.type !== 'event') return;
        const done = Number(m.header?.doneBytes) || 0;
        s.onProgress({ type: 'disk-progress', vm, disk: disk.name, doneBytes: done, sizeBytes: Math.max(done, disk.size ?? 0) });
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
    };
  } catch (err) {
    report.status = 'failed';
    report.error = summary(s.signal?.aborted ? interrupted(where) : err instanceof FerryError ? err.at(where) : err);
    outcome = undefined;
  }
  report.durationMs = Math.round(performance.now() - t0);
  s.onProgress({ type: 'disk-end', report });
  return { report, outcome };
}

/** Stage 1 of the disk plan: what the server decides without the open disk or the repository. */
function baseOf(disk: SourceDisk, previous: RestorePoint | undefined, blockSize: number): Pick<DiskOrder, 'base' | 'fullReason'> {
  const choice = chooseBase(disk, previous, blockSize);
  return 'base' in choice ? { base: choice.base } : { fullReason: choice.fullReason };
}

/** Errors from the services keep their code; a lost repository service is named as such. */
function summary(err: unknown): ReportedError {
  if (err instanceof FerryError && /^PIPE_(CLOSED|TIMEOUT)$/.test(err.code)) {
    return { code: 'REMOTE_SESSION_LOST', message: `REMOTE_SESSION_LOST: the repository service went away (${err.message}); nothing of this session was committed after that`, where: err.where };
  }
  const e = errorToWire(err);
  return err instanceof FerryError ? { ...e, message: err.message } : e;
}

