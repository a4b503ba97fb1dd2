import type { SessionInfo, SourceDisk, SourceHost, VmInventory, VmSnapshot } from '../contracts/source-host.js';
import type { DiskHandle } from '../contracts/transport.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import type { BlockRecord } from '../pipe/block-record.js';
import { SourceMover, type SourceCounters, type SourceMoverOptions } from '../pipe/source-mover.js';
import { TargetMover, type TargetCounters } from '../pipe/target-mover.js';
import type { BlockMap } from '../repository/block-map.js';
import { Repository, type RestorePoint, type RestorePointDisk } from '../repository/repository.js';
import type { RepositoryLock } from '../repository/repository-lock.js';
import type { JobRuntime } from './job-runtime.js';
import type { DiskReport, ProgressEvent, SessionReport, VmReport } from '../report/session-report.js';
import { lockSession, retentionAfterSession, verifyAfterSession, type VerifyOutcome } from './session-upkeep.js';
import { newStageMeters, stageReport, type StageMeters } from '../pipe/stage-meter.js';
import { runRemoteBackup } from './remote-backup.js';
import { guardHandle } from '../pipe/guarded-handle.js';
import { errorSummary, interrupted, newSessionReport, previousPoint } from './session-common.js';
import { DiskSlots, mapInOrder } from './disk-slots.js';
import { chooseTransport, planMode, previousOf, skipExtents, type TransportSource } from '../plan/disk-plan.js';

export interface BackupOptions {
  onProgress?: (e: ProgressEvent) => void;
  /** Aborting stops reading at the next block; snapshots are released and nothing unfinished is committed. */
  signal?: AbortSignal;
}

interface SessionParts {
  rt: JobRuntime;
  sessionId: string;
  host: SourceHost;
  mover: SourceMoverOptions;
  target: TargetMover;
  meters: StageMeters;
  repo: Repository;
  /** Held on the job's VM chains for the whole session; checked before each commit. */
  lock: RepositoryLock;
  /** `parallelDisks`: shared by all VMs of the session. */
  slots: DiskSlots;
  onProgress: (e: ProgressEvent) => void;
  signal?: AbortSignal;
}

/**
 * Runs one backup session of a job: every VM is snapshotted (when its host can), each disk flows
 * through the source-side mover into the target-side mover, and each VM whose disks all succeeded
 * gets one restore point, committed atomically. The snapshot is released on every exit path.
 */
export async function runBackup(rt: JobRuntime, opts: BackupOptions = {}): Promise<SessionReport> {
  // Remote data movers: the proxies read, the repository service writes (core/src/remote/services/).
  if (rt.spec.remote) return runRemoteBackup(rt, rt.spec.remote, opts);
  const started = new Date();
  const meters = newStageMeters();
  const report = newSessionReport(rt, started, rt.spec.repository.type);

  let lock: RepositoryLock | undefined;
  let verifyAfter: (() => Promise<VerifyOutcome | undefined>) | undefined;
  try {
    const host = await rt.sourceHost();
    report.source = host.label;
    const repo = await rt.repository({ create: true, writeMeter: meters['target write'] });
    report.repository = repo.backend.location;
    lock = await lockSession(repo, rt, report.session);
    const codec = rt.spec.storage.compressor;
    const parts: SessionParts = {
      rt,
      sessionId: report.session,
      host,
      repo,
      meters,
      lock,
      slots: new DiskSlots(rt.spec.parallelDisks),
      target: new TargetMover(repo, { trustedSource: true }),
      mover: {
        blockSize: rt.spec.storage.blockSize,
        compressor: { name: codec.name, level: codec.level },
        codec: await rt.codec(),
        // embedded pipe: the source asks the repository directly before compressing a block
        isKnown: (hash) => repo.blocks.has(hash),
        filters: await rt.filters(),
        // the target mover copies each new block into its pack before asking for the next
        lendBuffers: true,
      },
      onProgress: opts.onProgress ?? (() => undefined),
      signal: opts.signal,
    };
    const poolBusyBefore = (parts.mover.codec as { busyMs?: number }).busyMs ?? 0;
    const inventory = await host.inventory(rt.spec.source.vms).catch((err) => {
      throw pluginError(err, rt.plugins.providerOf('source-host', rt.spec.source.host), 'inventory', { host: host.label });
    });
    // Up to parallelDisks VMs at once (each holds a snapshot); their disks share the disk slots.
    // Reports keep inventory order whatever finishes first.
    const results = await mapInOrder(inventory, rt.spec.parallelDisks, async (vm) => {
      if (opts.signal?.aborted) {
        return { vmReport: { vm: vm.name, status: 'failed', restorePoint: null, error: errorSummary(interrupted({ vm: vm.name })) } as VmReport, disks: [] };
      }
      return backupVm(parts, vm);
    });
    for (const { vmReport, disks } of results) {
      report.vms.push(vmReport);
      report.disks.push(...disks);
    }
    const pool = parts.mover.codec as { busyMs?: number; threads?: number };
    if (pool.busyMs !== undefined && pool.threads) meters.processing.setMeasured((pool.busyMs - poolBusyBefore) / pool.threads);
    report.retention = await retentionAfterSession(rt, repo, lock, report);
    report.protection = repo.protection();
    verifyAfter = () => verifyAfterSession(rt, repo, parts.mover.codec, report);
  } catch (err) {
    report.error = errorSummary(err);
  }
  await lock?.release();
  // After the release: the health check takes its own lock and must not hold up the next backup.
  const verified = await verifyAfter?.();
  if (verified) report.verify = verified;
  const finished = new Date();
  report.finishedAt = finished.toISOString();
  report.durationMs = finished.getTime() - started.getTime();
  for (const d of report.disks) {
    for (const k of Object.keys(report.totals) as (keyof SessionReport['totals'])[]) report.totals[k] += d[k];
  }
  Object.assign(report, stageReport(meters, report.durationMs));
  report.healedBlocks = report.disks.reduce((n, d) => n + d.blocks.healed, 0);
  if (report.verify?.status === 'damaged') report.error ??= report.verify.error;
  if (report.error || report.vms.some((v) => v.status === 'failed')) report.status = 'failed';
  return report;
}

async function backupVm(s: SessionParts, vm: VmInventory): Promise<{ vmReport: VmReport; disks: DiskReport[] }> {
  const vmReport: VmReport = { vm: vm.name, status: 'success', restorePoint: null };
  const reports: DiskReport[] = [];
  let snapshot: VmSnapshot | undefined;
  try {
    let disks = vm.disks;
    const previous = previousOf(await s.repo.listPoints(vm.name), s.rt.spec.job);
    if (s.host.snapshot) {
      const info: SessionInfo = { job: s.rt.spec.job, sessionId: s.sessionId, previous: previous && previousPoint(previous) };
      snapshot = await s.host.snapshot(vm, info).catch((err) => {
        throw pluginError(err, s.rt.plugins.providerOf('source-host', s.rt.spec.source.host), 'snapshot', { host: s.host.label, vm: vm.name });
      });
      disks = snapshot.disks;
    }
    const maps: BlockMap[] = [];
    const pointDisks: Omit<RestorePointDisk, 'map' | 'mapSha256'>[] = [];
    // Each disk waits for one of the session's parallelDisks slots; a disk not started when the
    // session is interrupted leaves no report and fails the VM.
    const done = await mapInOrder(disks, disks.length, (disk) =>
      s.slots.run(async (): Promise<{ disk: SourceDisk; report?: DiskReport; map?: BlockMap }> =>
        s.signal?.aborted ? { disk } : { disk, ...(await backupDisk(s, vm.name, disk, previous)) },
      ),
    );
    const notStarted = done.find((d) => !d.report);
    for (const { disk, report, map } of done) {
      if (!report) continue;
      reports.push(report);
      if (map) {
        maps.push(map);
        pointDisks.push({ ...pointDisk(report, map), ...(disk.changeTracking && { changeTracking: disk.changeTracking }) });
      }
    }
    if (notStarted) throw interrupted({ vm: vm.name, disk: notStarted.disk.name });
    const failed = reports.find((r) => r.status === 'failed');
    if (failed?.error?.code === 'SESSION_INTERRUPTED') throw interrupted({ vm: vm.name, disk: failed.disk });
    if (failed) throw new FerryError('BACKUP_DISK_FAILED', `disk ${failed.disk} failed: ${failed.error?.message}`, { vm: vm.name });
    await snapshot?.check?.().catch((err) => {
      throw pluginError(err, s.rt.plugins.providerOf('source-host', s.rt.spec.source.host), 'check', { host: s.host.label, vm: vm.name });
    });
    await s.lock.assertHeld();
    const point = await s.repo.commitPoint(
      { id: s.sessionId, job: s.rt.spec.job, vm: vm.name, session: s.sessionId, createdAt: new Date().toISOString(), disks: pointDisks as RestorePointDisk[] },
      maps,
    );
    vmReport.restorePoint = point.id;
    for (const r of reports) r.restorePoint = point.id;
  } catch (err) {
    vmReport.status = 'failed';
    vmReport.error = errorSummary(err);
  } finally {
    if (snapshot) {
      await snapshot.release(vmReport.status).catch((err) => {
        vmReport.status = 'failed';
        vmReport.error ??= errorSummary(pluginError(err, s.rt.plugins.providerOf('source-host', s.rt.spec.source.host), 'release', { vm: vm.name }));
      });
    }
  }
  return { vmReport, disks: reports };
}

function pointDisk(r: DiskReport, map: BlockMap): Omit<RestorePointDisk, 'map' | 'mapSha256'> {
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

/**
 * The manifest's `filtered`: blocks filters stored as zero blocks although they may have held data,
 * so a restore differs from the source there. The built-in `zero` filter drops only blocks of zeros.
 */
function droppedData(filtered: Record<string, number> = {}): { filtered?: Record<string, number> } {
  const dropped = Object.entries(filtered).filter(([name]) => name !== 'zero');
  return dropped.length ? { filtered: Object.fromEntries(dropped) } : {};
}

async function backupDisk(s: SessionParts, vm: string, disk: SourceDisk, previous?: RestorePoint): Promise<{ report: DiskReport; map?: BlockMap }> {
  const t0 = performance.now();
  const src: SourceCounters = { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 };
  const dst: TargetCounters = { bytesWritten: 0, blocksNew: 0, blocksDeduped: 0, blocksZero: 0, blocksUnchanged: 0 };
  const report: DiskReport = {
    vm,
    disk: disk.name,
    status: 'success',
    transport: '',
    transportReason: '',
    mode: 'full',
    modeReason: '',
    sizeBytes: disk.size ?? 0,
    blockSize: s.mover.blockSize,
    bytesRead: 0,
    zeroBytesSkipped: 0,
    bytesTransferred: 0,
    bytesWritten: 0,
    blocks: { total: 0, zero: 0, new: 0, deduped: 0, unchanged: 0, healed: 0 },
    durationMs: 0,
    restorePoint: null,
  };
  const where: ErrorLocation = { vm, disk: disk.name };
  let handle: DiskHandle | undefined;
  let map: BlockMap | undefined;
  const healedBefore = s.repo.blocks.healed;
  try {
    const chosen = await chooseTransport(s.rt.spec.transport, disk, transportsOf(s.rt), where);
    report.transport = chosen.name;
    report.transportReason = chosen.reason;
    handle = guardHandle(
      await chosen.transport.open(disk).catch((err) => {
        throw pluginError(err, s.rt.plugins.providerOf('transport', chosen.name), 'open', where);
      }),
      s.rt.plugins.providerOf('transport', chosen.name),
      where,
    );
    report.sizeBytes = handle.size;
    report.blocks.total = Math.ceil(handle.size / s.mover.blockSize);
    s.onProgress({ type: 'disk-start', vm, disk: disk.name, sizeBytes: handle.size, transport: chosen.name });
    const skip = await skipExtents(s.mover.filters, disk, where);
    const plan = await planMode(disk, previous, s.mover.blockSize, s.repo, handle);
    report.mode = plan.mode;
    report.modeReason = plan.reason;
    const mover = new SourceMover(s.mover, s.meters);
    const changed = plan.mode === 'incremental' ? plan.changed : undefined;
    const records = withProgress(mover.blocks(handle, skip, src, changed), s, vm, disk.name, handle.size);
    const header = { vm, disk: disk.name, sizeBytes: handle.size, blockSize: s.mover.blockSize };
    map = await s.target.receiveDisk(header, records, dst, plan.base);
  } catch (err) {
    report.status = 'failed';
    report.error = errorSummary(err instanceof FerryError ? err.at(where) : err);
    map = undefined;
  } finally {
    await handle?.close().catch(() => undefined);
  }
  const { filtered, ...read } = src;
  Object.assign(report, read, { bytesWritten: dst.bytesWritten, durationMs: Math.round(performance.now() - t0) });
  report.blocks = {
    total: report.blocks.total,
    zero: dst.blocksZero,
    new: dst.blocksNew,
    deduped: dst.blocksDeduped,
    unchanged: dst.blocksUnchanged,
    healed: s.repo.blocks.healed - healedBefore,
    filtered: { ...filtered },
  };
  s.onProgress({ type: 'disk-end', report });
  return { report, map };
}

/** The job's transports, as the disk plan picks among them. */
function transportsOf(rt: JobRuntime): TransportSource {
  return {
    available: () => rt.plugins.available('transport').map((t) => t.name),
    create: (name) => rt.transport(name),
    providerOf: (name) => rt.plugins.providerOf('transport', name),
  };
}

async function* withProgress(
  records: AsyncIterable<BlockRecord>,
  s: SessionParts,
  vm: string,
  disk: string,
  sizeBytes: number,
): AsyncGenerator<BlockRecord> {
  let done = 0;
  for await (const r of records) {
    if (s.signal?.aborted) throw interrupted({ vm, disk, offset: r.index * s.mover.blockSize });
    done += r.length;
    s.onProgress({ type: 'disk-progress', vm, disk, doneBytes: done, sizeBytes });
    yield r;
  }
}
