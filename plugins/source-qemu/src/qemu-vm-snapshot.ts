import { FerryError, type ErrorLocation, type SessionInfo, type SourceDisk, type VmSnapshot } from '@ferry/core';
import { addNbdExport, addOverlay, CleanupLog, ensureNbdServer, removeOverlay, stopNbdServerIfIdle } from './block-objects.js';
import { readBlockState, type ResolvedDisk } from './block-state.js';
import { previousTracking, type TrackingPlan } from './change-tracking.js';
import { isJobBitmap, type FleeceNames } from './ferry-names.js';
import { QmpClient } from './qmp-client.js';
import { formatAddress, type SocketAddress } from './socket-address.js';

/** A VM as inventory found it: where its monitor and NBD server are, and its disks. */
export interface QemuVm {
  name: string;
  qmp: SocketAddress;
  nbd: SocketAddress;
  disks: ResolvedDisk[];
  /** Job-file location of one of the VM's keys, for errors. */
  where(key?: 'qmp' | 'nbd'): ErrorLocation;
}

/** One disk of a snapshot: what it tracks and the names of what it creates. */
export interface DiskPlan {
  disk: ResolvedDisk;
  plan: TrackingPlan;
  names: FleeceNames;
  /** Leftover clean-up and bitmap recovery that concern this disk, for `fullReason`. */
  notes: string[];
}

/** Opens a QMP connection to the VM's monitor, with its job-file location on every error. */
export function connectVm(vm: QemuVm): Promise<QmpClient> {
  return QmpClient.connect(vm.qmp, { where: { ...vm.where('qmp'), vm: vm.name } });
}

/**
 * A point-in-time view of a VM's disks through copy-before-write fleecing, served as NBD exports.
 * `build` creates it step by step and records each step, so `teardown` (used by `release` and to
 * undo a failed `build`) removes exactly what exists, in the order QEMU accepts.
 */
export class QemuVmSnapshot implements VmSnapshot {
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
    for (const p of this.parts) {
      const o = { node: p.names.node, fileNode: p.names.fileNode, file: p.names.file, size: p.disk.size, backing: p.disk.node };
      await addOverlay(qmp, o);
    }
    await qmp.execute('transaction', { actions: this.parts.flatMap((p) => snapshotActions(p)) });
    this.transactionDone = true;
    this.startedServer = await ensureNbdServer(qmp, this.vm.nbd, { ...this.vm.where('nbd'), vm: this.vm.name });
    for (const p of this.parts) await addNbdExport(qmp, p.names.exportId, p.names.node, p.plan.previousBitmap);
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

  /** Removes the exports, fleecing jobs and overlays, then settles the bitmaps for `outcome`. */
  async teardown(qmp: QmpClient, outcome: 'success' | 'failed', log: CleanupLog): Promise<void> {
    const state = await readBlockState(qmp);
    for (const p of this.parts) {
      if (this.transactionDone && !state.jobs.some((j) => j.id === p.names.node)) {
        log.failures.push(`fleecing job ${p.names.node} of disk ${p.disk.name} ended before release: reads after that may not be point-in-time`);
      }
      const o = { node: p.names.node, fileNode: p.names.fileNode, file: p.names.file, exports: [p.names.exportId] };
      await removeOverlay(qmp, state, o, log);
    }
    if (this.startedServer) await log.step('NBD server', () => stopNbdServerIfIdle(qmp).catch(ignoreNotRunning));
    if (!this.transactionDone) return;
    for (const p of this.parts) {
      if (outcome === 'success') await this.retirePrevious(qmp, p, log);
      else await rollBack(qmp, p, log);
    }
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

  private sourceDisk(p: DiskPlan): SourceDisk {
    const { plan } = p;
    const d: SourceDisk = {
      name: p.disk.name,
      size: p.disk.size,
      format: 'raw',
      nbd: { address: formatAddress(this.vm.nbd), exportName: p.names.exportId, ...(plan.previousBitmap && { bitmap: plan.previousBitmap }) },
    };
    if (plan.newBitmap) d.changeTracking = { id: plan.newBitmap, node: plan.node };
    if (plan.since) d.changes = { since: plan.since };
    else d.fullReason = [plan.fullReason, ...p.notes].filter(Boolean).join('; ');
    return d;
  }
}

/**
 * The snapshot transaction's actions for one disk, all atomic together (the freeze window): start
 * the new bitmap, stop the previous one (it now holds exactly the writes since the previous point),
 * and start copy-before-write into the overlay (the overlay now shows the disk as of this instant).
 */
function snapshotActions(p: DiskPlan): Record<string, unknown>[] {
  const { plan, names } = p;
  const actions: Record<string, unknown>[] = [];
  if (plan.newBitmap) actions.push({ type: 'block-dirty-bitmap-add', data: { node: plan.node, name: plan.newBitmap, persistent: true } });
  if (plan.previousBitmap) actions.push({ type: 'block-dirty-bitmap-disable', data: { node: plan.node, name: plan.previousBitmap } });
  actions.push({ type: 'blockdev-backup', data: { 'job-id': names.node, device: plan.node, target: names.node, sync: 'none' } });
  return actions;
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
