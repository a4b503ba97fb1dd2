import type { SessionInfo, SourceDisk, SourceHost, VmInventory, VmSnapshot } from '../contracts/source-host.js';
import { FerryError, pluginError } from '../errors.js';
import { newDiskReport, type BackupPlacement, type KeptDisk, type MovedDisk } from './backup-placement.js';
import { previousOf } from '../plan/disk-plan.js';
import { DiskSlots, mapInOrder } from './disk-slots.js';
import { EmbeddedBackup } from './embedded-backup.js';
import type { JobRuntime } from './job-runtime.js';
import { interrupted, newSessionReport, previousPoint } from './session-common.js';
import type { GuestProcessing } from './guest-processing.js';
import type { DiskReport, ProgressEvent, SessionReport, VmReport } from '../report/session-report.js';

export interface BackupOptions {
  onProgress?: (e: ProgressEvent) => void;
  /** Aborting stops reading at the next block; snapshots are released and nothing unfinished is committed. */
  signal?: AbortSignal;
}

/**
 * Where the job's data movers run, chosen once per session: in this process, or (`repository.server`
 * in the job) the proxies and the repository service. Nothing else in a session asks.
 */
export async function backupPlacement(rt: JobRuntime, opts: BackupOptions = {}): Promise<BackupPlacement> {
  const onProgress = opts.onProgress ?? (() => undefined);
  if (!rt.spec.remote) return new EmbeddedBackup(rt, onProgress, opts.signal);
  // The wire and service protocol modules load only for a job that uses them.
  const { RemoteBackup } = await import('./remote-backup.js');
  return new RemoteBackup(rt, rt.spec.remote, onProgress, opts.signal);
}

/** Runs one backup session of a job with the data movers where the job places them. */
export async function runBackup(rt: JobRuntime, opts: BackupOptions = {}): Promise<SessionReport> {
  return runBackupSession(rt, await backupPlacement(rt, opts), opts);
}

interface Session {
  rt: JobRuntime;
  id: string;
  host: SourceHost;
  placement: BackupPlacement;
  /** `parallelDisks`: shared by all VMs of the session. */
  slots: DiskSlots;
  signal?: AbortSignal;
}

/**
 * The one backup session loop, whatever the placement: inventory; then up to `parallelDisks` VMs
 * at once, each snapshotted (when its host can), its disks moved within the session's
 * `parallelDisks` slots, its point committed atomically once all its disks succeeded, its snapshot
 * released on every exit path; then retention, the lock released, the health check, the report.
 */
export async function runBackupSession(rt: JobRuntime, placement: BackupPlacement, opts: BackupOptions = {}): Promise<SessionReport> {
  const started = new Date();
  const report = newSessionReport(rt, started, rt.spec.remote ? `ferry://${rt.spec.remote.server}` : rt.spec.repository.type);
  try {
    const host = await rt.sourceHost();
    report.source = host.label;
    await rt.resolveVms(host);
    report.repository = await placement.open(report.session);
    const s: Session = { rt, id: report.session, host, placement, slots: new DiskSlots(rt.spec.parallelDisks), signal: opts.signal };
    const inventory = await host.inventory(rt.spec.source.vms).catch((err) => {
      throw pluginError(err, rt.plugins.providerOf('source-host', rt.spec.source.host), 'inventory', { host: host.label });
    });
    // Up to parallelDisks VMs at once (each holds a snapshot); their disks share the disk slots.
    // Reports keep inventory order whatever finishes first.
    const results = await mapInOrder(inventory, rt.spec.parallelDisks, async (vm) => {
      if (opts.signal?.aborted) {
        return { vmReport: { vm: vm.name, status: 'failed', restorePoint: null, error: placement.reportedError(interrupted({ vm: vm.name })) } as VmReport, disks: [] };
      }
      return backupVm(s, vm);
    });
    for (const { vmReport, disks } of results) {
      report.vms.push(vmReport);
      report.disks.push(...disks);
    }
    Object.assign(report, await placement.finish(report));
  } catch (err) {
    report.error = placement.reportedError(opts.signal?.aborted ? interrupted({}) : err);
  } finally {
    await placement.close();
  }
  const finished = new Date();
  report.finishedAt = finished.toISOString();
  report.durationMs = finished.getTime() - started.getTime();
  for (const d of report.disks) {
    for (const k of Object.keys(report.totals) as (keyof SessionReport['totals'])[]) report.totals[k] += d[k];
  }
  Object.assign(report, placement.figures(report, report.durationMs));
  report.healedBlocks = report.disks.reduce((n, d) => n + d.blocks.healed, 0);
  if (report.verify?.status === 'damaged') report.error ??= report.verify.error;
  // A `copyTo:` target the points did not reach fails the session: the job asked for the copy.
  report.error ??= report.copies?.find((c) => c.error)?.error;
  if (report.error || report.vms.some((v) => v.status === 'failed')) report.status = 'failed';
  return report;
}

/**
 * One VM, in the order docs/architecture.md gives: guest runtime deployed, pre-freeze actions, the
 * source host's snapshot preparation (outside the freeze), freeze, snapshot, thaw, post-thaw, its
 * disks moved, the point committed, post-backup actions (only then), the runtime removed and the
 * snapshot released on every path.
 */
async function backupVm(s: Session, vm: VmInventory): Promise<{ vmReport: VmReport; disks: DiskReport[] }> {
  const vmReport: VmReport = { vm: vm.name, status: 'success', restorePoint: null, ...(vm.notes?.length && { notes: [...vm.notes] }) };
  const provider = s.rt.plugins.providerOf('source-host', s.rt.spec.source.host);
  const guest = await guestOf(s, vm.name);
  if (guest) vmReport.guest = guest.report;
  let moved: MovedDisk[] = [];
  let snapshot: VmSnapshot | undefined;
  try {
    let disks = vm.disks;
    const previous = previousOf(await s.placement.listPoints(vm.name), s.rt.spec.job);
    if (guest) {
      await guest.deploy();
      await guest.preFreeze();
    }
    if (s.signal?.aborted) throw interrupted({ vm: vm.name });
    const info: SessionInfo = { job: s.rt.spec.job, sessionId: s.id, previous: previous && previousPoint(previous) };
    snapshot = await takeSnapshot(s, vm, info, guest);
    await guest?.postThaw();
    if (snapshot) disks = snapshot.disks;
    if (snapshot?.notes?.length) vmReport.notes = [...(vmReport.notes ?? []), ...snapshot.notes];
    if (guest) disks = await guest.skipExtents(disks);
    // Each disk waits for one of the session's parallelDisks slots; a disk not started when the
    // session is interrupted is reported failed (SESSION_INTERRUPTED) and fails the VM.
    moved = await mapInOrder(disks, disks.length, (disk) => s.slots.run(() => (s.signal?.aborted ? notStarted(s, vm.name, disk) : s.placement.moveDisk(vm.name, disk, previous))));
    const failed = moved.find((d) => d.report.status === 'failed');
    if (failed?.report.error?.code === 'SESSION_INTERRUPTED') throw interrupted({ vm: vm.name, disk: failed.report.disk });
    if (failed) throw new FerryError('BACKUP_DISK_FAILED', `disk ${failed.report.disk} failed: ${failed.report.error?.message}`, { vm: vm.name });
    await snapshot?.check?.().catch((err) => {
      throw pluginError(err, provider, 'check', { host: s.host.label, vm: vm.name });
    });
    if (s.signal?.aborted) throw interrupted({ vm: vm.name });
    const header = { id: s.id, createdAt: new Date().toISOString(), ...(snapshot?.definition && { definition: snapshot.definition }) };
    const point = await s.placement.commit(vm.name, header, kept(moved));
    vmReport.restorePoint = point.id;
    for (const d of moved) d.report.restorePoint = point.id;
    await guest?.afterBackup();
  } catch (err) {
    vmReport.status = 'failed';
    vmReport.error = s.placement.reportedError(err);
    await s.placement.discard(kept(moved));
  } finally {
    await guest?.close(vmReport.restorePoint !== null);
    if (snapshot) {
      await snapshot.release(vmReport.status).catch((err) => {
        vmReport.status = 'failed';
        vmReport.error ??= s.placement.reportedError(pluginError(err, provider, 'release', { vm: vm.name }));
      });
    }
  }
  return { vmReport, disks: moved.map((d) => d.report) };
}

async function guestOf(s: Session, vm: string): Promise<GuestProcessing | undefined> {
  const spec = s.rt.spec.guests[vm];
  if (!spec) return undefined;
  const { GuestProcessing } = await import('./guest-processing.js');
  return new GuestProcessing({
    vm,
    spec,
    runtime: () => s.rt.guestRuntime(spec.os, [...spec.at, 'os']),
    ...(s.host.guestAgent && { hostAgent: () => s.host.guestAgent!(vm) }),
    plugin: s.rt.plugins.providerOf('guest-runtime', spec.os),
    where: (p) => s.rt.jobFile.where(p),
    reportedError: (err) => s.placement.reportedError(err),
    signal: s.signal,
  });
}

/**
 * The source host's snapshot with the guest frozen around its atomic step only: a host with
 * `prepareSnapshot` prepares before the freeze and opens (exports) after the thaw; one without does
 * all of `snapshot` in the freeze window. Thawed on every path; a prepared snapshot not opened is
 * abandoned. Undefined when the host has no snapshots (disks at rest).
 */
async function takeSnapshot(s: Session, vm: VmInventory, info: SessionInfo, guest: GuestProcessing | undefined): Promise<VmSnapshot | undefined> {
  const provider = s.rt.plugins.providerOf('source-host', s.rt.spec.source.host);
  const stamp = (hook: string) => (err: unknown): never => {
    throw pluginError(err, provider, hook, { host: s.host.label, vm: vm.name });
  };
  const host = s.host;
  const prepared = host.prepareSnapshot ? await host.prepareSnapshot(vm, info).catch(stamp('prepareSnapshot')) : undefined;
  let opened: VmSnapshot | undefined;
  try {
    let snapshot: VmSnapshot | undefined;
    try {
      await guest?.freeze();
      if (s.signal?.aborted) throw interrupted({ vm: vm.name });
      const take = async (): Promise<VmSnapshot | undefined> => {
        if (prepared) await prepared.take().catch(stamp('take'));
        else if (host.snapshot) return host.snapshot(vm, info).catch(stamp('snapshot'));
        return undefined;
      };
      if (!prepared && !host.snapshot) guest?.skip('snapshot', `${host.label} reads the disks at rest (no snapshot)`);
      else snapshot = guest ? await guest.snapshot(take) : await take();
    } finally {
      await guest?.thaw();
    }
    opened = prepared ? await prepared.open().catch(stamp('open')) : snapshot;
    return opened;
  } finally {
    if (prepared && !opened) await prepared.abandon().catch(() => undefined);
  }
}

function kept(moved: MovedDisk[]): KeptDisk[] {
  return moved.flatMap((d) => (d.kept ? [d.kept] : []));
}

async function notStarted(s: Session, vm: string, disk: SourceDisk): Promise<MovedDisk> {
  const error = s.placement.reportedError(interrupted({ vm, disk: disk.name }));
  return { report: { ...newDiskReport(vm, disk, s.rt.spec.storage.blockSize), status: 'failed', error } };
}

