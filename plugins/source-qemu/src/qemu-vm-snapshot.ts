import { FerryError, type ErrorLocation, type Extent, type SessionInfo, type SourceDisk, type VmSnapshot } from '@ferry/core/plugin';
import { addNbdExport, addOverlay, CleanupLog, ensureNbdServer, removeOverlay, stopNbdServerIfIdle } from './block-objects.js';
import { readBlockState, type BlockState, type ResolvedDisk } from './block-state.js';
import { previousTracking, type TrackingPlan } from './change-tracking.js';
import { readDirtyExtents } from './dirty-extents.js';
import { addSnapshotOverlay, removeSnapshotOverlay, snapshotAction } from './external-snapshot.js';
import { isJobBitmap, type OverlayNames } from './ferry-names.js';
import { proveImage } from './image-bitmaps.js';
import { QmpClient } from './qmp-client.js';
import type { SnapshotMode } from './snapshot-kind.js';
import { formatAddress, type SocketAddress } from './socket-address.js';

/** A VM as inventory found it: where its monitor and NBD server are, and its disks. */
export interface QemuVm {
  name: string;
  qmp: SocketAddress;
  nbd: SocketAddress;
  disks: ResolvedDisk[];
  /** The VM's `snapshot:` key: whether its disks may get external snapshots for hot-add. */
  snapshotMode: SnapshotMode;
  /** Job-file location of one of the VM's keys, for errors. */
  where(key?: 'qmp' | 'nbd' | 'snapshot'): ErrorLocation;
}

/** One disk of a snapshot: what it tracks, how it is snapshotted (`names.kind`) and what it creates. */
export interface DiskPlan {
  disk: ResolvedDisk;
  plan: TrackingPlan;
  names: OverlayNames;
  /** External snapshots: the disk's image file as QEMU names it, which hot-add may read once proven. */
  image?: string;
  /** Leftover clean-up, bitmap recovery and the choice of snapshot kind for this disk, for `fullReason`. */
  notes: string[];
}

/** What an external snapshot offers beyond its NBD export, found once the image stands still. */
interface ExternalAccess {
  /** The image path, once proven to be the image QEMU holds. */
  path?: string;
  /** Incremental runs: the previous bitmap's dirty ranges, read by the host itself. */
  extents?: Extent[];
  /** Why `path` or `extents` could not be offered. */
  problems: string[];
}

/** Opens a QMP connection to the VM's monitor, with its job-file location on every error. */
export function connectVm(vm: QemuVm): Promise<QmpClient> {
  return QmpClient.connect(vm.qmp, { where: { ...vm.where('qmp'), vm: vm.name } });
}

/**
 * A point-in-time view of a VM's disks, per disk either copy-before-write fleecing or an external
 * snapshot (see `SnapshotKind`), started in one transaction and served as NBD exports; external
 * snapshots also offer the disk's image file to hot-add. `build` creates it step by step and records
 * each step, so `teardown` (used by `release` and to undo a failed `build`) removes exactly what
 * exists, in the order QEMU accepts.
 */
export class QemuVmSnapshot implements VmSnapshot {
  private readonly external = new Map<DiskPlan, ExternalAccess>();
  private startedServer = false;
  private transactionDone = false;
  private released = false;

  constructor(
    private readonly vm: QemuVm,
    private readonly session: SessionInfo,
    private readonly parts: DiskPlan[],
  ) {}

  get disks(): SourceDisk[] {
    return this.parts.map((p) => this.sourceDisk(p));
  }

  async build(qmp: QmpClient): Promise<void> {
    await this.addOverlays(qmp);
    await this.takePoint(qmp);
    await this.expose(qmp);
  }

  /** Before the point in time (outside a guest's freeze window): the overlays, unused until `takePoint`. */
  async addOverlays(qmp: QmpClient): Promise<void> {
    for (const p of this.parts) {
      const o = { node: p.names.node, fileNode: p.names.fileNode, file: p.names.file, size: p.disk.size };
      if (p.image) await addSnapshotOverlay(qmp, { ...o, backingFile: p.image });
      else await addOverlay(qmp, { ...o, backing: p.disk.node });
    }
  }

  /** The point in time: one transaction, the only step a guest's freeze window needs. */
  async takePoint(qmp: QmpClient): Promise<void> {
    await qmp.execute('transaction', { actions: this.parts.flatMap((p) => snapshotActions(p)) });
    this.transactionDone = true;
  }

  /** After the point in time (the guest thawed): NBD exports and, for external snapshots, hot-add access. */
  async expose(qmp: QmpClient): Promise<void> {
    this.startedServer = await ensureNbdServer(qmp, this.vm.nbd, { ...this.vm.where('nbd'), vm: this.vm.name });
    // An external snapshot's disk node no longer changes: it is the point-in-time view itself.
    for (const p of this.parts) await addNbdExport(qmp, p.names.exportId, p.image ? p.disk.node : p.names.node, p.plan.previousBitmap);
    for (const p of this.parts) if (p.image) this.external.set(p, await this.externalAccess(p, p.image));
  }

  /**
   * The image path is offered only when the file this proxy opens under that name holds the bitmap
   * this session has just created (QEMU wrote its bitmaps into the image when it became read-only):
   * a same-named file on another machine or in another mount namespace must never be backed up.
   * Hot-add has no dirty bitmap of its own, so the host reads the previous bitmap's ranges itself.
   */
  private async externalAccess(p: DiskPlan, image: string): Promise<ExternalAccess> {
    const out: ExternalAccess = { problems: [] };
    const proof = await proveImage(image, p.plan.newBitmap);
    if (proof.ok) out.path = image;
    else out.problems.push(`hot-add not offered for ${p.disk.name}: ${proof.reason}`);
    const prev = p.plan.previousBitmap;
    if (prev) {
      await readDirtyExtents(formatAddress(this.vm.nbd), p.names.exportId, prev).then(
        (extents) => (out.extents = extents),
        (err: unknown) => out.problems.push(`the dirty ranges of bitmap ${prev} could not be read: ${err instanceof Error ? err.message : String(err)}`),
      );
    }
    return out;
  }

  /**
   * Before the point is committed: the view held only if every fleecing job still runs (without it
   * guest writes reach the disk uncopied) and every external snapshot's overlay is still on top of its
   * disk (a commit or removal by anyone else would have let writes reach the image being read).
   */
  async check(): Promise<void> {
    const qmp = await connectVm(this.vm);
    try {
      const state = await readBlockState(qmp);
      const broken = this.parts.map((p) => whyViewBroke(state, p)).filter((w): w is string => w !== undefined);
      if (broken.length) {
        throw new FerryError('PLUGIN_FAILED', `the snapshot of session ${this.session.sessionId} did not hold: ${broken.join('; ')}`, {
          vm: this.vm.name,
          host: qmp.label,
        });
      }
    } finally {
      await qmp.close();
    }
  }

  async release(outcome: 'success' | 'failed'): Promise<void> {
    if (this.released) return;
    this.released = true;
    const qmp = await connectVm(this.vm);
    const log = new CleanupLog();
    try {
      await this.teardown(qmp, outcome, log);
    } finally {
      await qmp.close();
    }
    log.throwIfFailed(`releasing the snapshot of session ${this.session.sessionId} (${outcome})`, { vm: this.vm.name, host: qmp.label });
  }

  /**
   * Removes the exports, fleecing jobs and overlays (committing external ones), then settles the
   * bitmaps for `outcome` on every disk whose node is writable again.
   */
  async teardown(qmp: QmpClient, outcome: 'success' | 'failed', log: CleanupLog): Promise<void> {
    const state = await readBlockState(qmp);
    const settle: DiskPlan[] = [];
    for (const p of this.parts) if (await this.removeDiskObjects(qmp, state, p, log)) settle.push(p);
    if (this.startedServer) await log.step('NBD server', () => stopNbdServerIfIdle(qmp).catch(ignoreNotRunning));
    if (!this.transactionDone) return;
    for (const p of settle) {
      if (outcome === 'success') await this.retirePrevious(qmp, p, log);
      else await rollBack(qmp, p, log);
    }
  }

  /** Resolves false when an external snapshot's overlay could not be committed and stays in place. */
  private async removeDiskObjects(qmp: QmpClient, state: BlockState, p: DiskPlan, log: CleanupLog): Promise<boolean> {
    const o = { node: p.names.node, fileNode: p.names.fileNode, file: p.names.file, exports: [p.names.exportId] };
    if (p.names.kind === 'external') {
      if (await removeSnapshotOverlay(qmp, state, o, log)) return true;
      log.failures.push(
        `disk ${p.disk.name}: overlay ${o.node} stays on top of node ${p.disk.node} and holds the guest's writes; the next session of job ${this.session.job} commits it and settles its bitmaps`,
      );
      return false;
    }
    if (this.transactionDone && !state.jobs.some((j) => j.id === p.names.node)) {
      log.failures.push(`fleecing job ${p.names.node} of disk ${p.disk.name} ended before release: reads after that may not be point-in-time`);
    }
    await removeOverlay(qmp, state, o, log);
    return true;
  }

  /**
   * After a committed point the new bitmap carries on alone: the previous point's bitmap (exported
   * this time, or found unusable) is no longer needed by anything.
   */
  private async retirePrevious(qmp: QmpClient, p: DiskPlan, log: CleanupLog): Promise<void> {
    const ct = previousTracking({ disk: p.disk.name, previous: this.session.previous });
    if (!ct || ct.node !== p.plan.node || ct.id === p.plan.newBitmap || !isJobBitmap(this.session.job, ct.id)) return;
    await log.step(`bitmap ${ct.id} on ${p.plan.node}`, () => qmp.execute('block-dirty-bitmap-remove', { node: p.plan.node, name: ct.id }));
  }

  /**
   * Every disk has its NBD export. An external snapshot's disk also has the image `path` (format
   * qcow2) when it was proven, and its changed ranges as `changes.extents`: an incremental run of
   * such a disk needs them, whichever transport reads it.
   */
  private sourceDisk(p: DiskPlan): SourceDisk {
    const { plan } = p;
    const ext = this.external.get(p);
    const d: SourceDisk = {
      name: p.disk.name,
      size: p.disk.size,
      format: ext?.path ? 'qcow2' : 'raw',
      ...(ext?.path && { path: ext.path }),
      nbd: { address: formatAddress(this.vm.nbd), exportName: p.names.exportId, ...(plan.previousBitmap && { bitmap: plan.previousBitmap }) },
    };
    if (plan.newBitmap) d.changeTracking = { id: plan.newBitmap, node: plan.node };
    if (plan.since && (!p.image || ext?.extents)) d.changes = { since: plan.since, ...(ext?.extents && { extents: ext.extents }) };
    else d.fullReason = [plan.fullReason, ...(ext?.problems ?? []), ...p.notes].filter(Boolean).join('; ');
    return d;
  }
}

/**
 * The snapshot transaction's actions for one disk, all atomic together (the freeze window): start
 * the new bitmap, stop the previous one (it now holds exactly the writes since the previous point),
 * and either start copy-before-write into the overlay (the overlay now shows the disk as of this
 * instant) or put the overlay on top (the disk's node now shows this instant and stays so).
 *
 * With an external snapshot the new bitmap sits on the disk's node, below the overlay, and records
 * nothing while the guest writes into the overlay; the active commit in `release` then writes every
 * cluster the guest wrote into the disk's node, which marks them in every recording bitmap there
 * (QEMU 7.2, checked by the specs). So the new bitmap ends up with exactly the writes since this
 * instant, as with fleecing, and lives where the next run looks for it.
 */
function snapshotActions(p: DiskPlan): Record<string, unknown>[] {
  const { plan, names } = p;
  const actions: Record<string, unknown>[] = [];
  if (plan.newBitmap) actions.push({ type: 'block-dirty-bitmap-add', data: { node: plan.node, name: plan.newBitmap, persistent: true } });
  if (plan.previousBitmap) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: plan.node, name: plan.previousBitmap } });
  if (names.kind === 'external') actions.push(snapshotAction(plan.node, names.node));
  else actions.push({ type: 'blockdev-backup', data: { 'job-id': names.node, device: plan.node, target: names.node, sync: 'none' } });
  return actions;
}

function whyViewBroke(state: BlockState, p: DiskPlan): string | undefined {
  const { node } = p.names;
  if (p.names.kind === 'external') {
    // A committed overlay still names the disk as its backing; what matters is that nothing writes the disk.
    const held = state.node(node) && state.backingOf(node) === p.disk.node && state.node(p.disk.node)?.ro === true;
    return held ? undefined : `overlay ${node} is no longer on top of disk ${p.disk.name} (node ${p.disk.node} is writable)`;
  }
  const job = state.jobs.find((j) => j.id === node);
  return job && !['concluded', 'aborting', 'null'].includes(job.status) ? undefined : `fleecing job ${node} of disk ${p.disk.name} has ended`;
}

/**
 * A failed session leaves no restore point, so the next run builds on the previous one: its bitmap
 * records again and takes over this session's writes. Enabling first, with the merge and removal in
 * the same transaction, leaves no instant in which a write is recorded by neither bitmap.
 */
async function rollBack(qmp: QmpClient, p: DiskPlan, log: CleanupLog): Promise<void> {
  const { node, newBitmap, previousBitmap } = p.plan;
  if (!newBitmap) return;
  if (!previousBitmap) {
    await log.step(`bitmap ${newBitmap} on ${node}`, () => qmp.execute('block-dirty-bitmap-remove', { node, name: newBitmap }));
    return;
  }
  await log.step(`bitmaps ${newBitmap} → ${previousBitmap} on ${node}`, () =>
    qmp.execute('transaction', {
      actions: [
        { type: 'block-dirty-bitmap-enable', data: { node, name: previousBitmap } },
        { type: 'block-dirty-bitmap-merge', data: { node, target: previousBitmap, bitmaps: [newBitmap] } },
        { type: 'block-dirty-bitmap-remove', data: { node, name: newBitmap } },
      ],
    }),
  );
}

function ignoreNotRunning(err: unknown): boolean {
  if (err instanceof FerryError && /not running/i.test(err.message)) return false;
  throw err;
}
