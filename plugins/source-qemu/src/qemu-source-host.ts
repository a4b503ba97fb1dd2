import {
  FerryError,
  type JobContext,
  type PreparedSnapshot,
  type SessionInfo,
  type SourceHost,
  type VmInventory,
  type VmSelection,
  type VmSnapshot,
} from '@ferry/core/plugin';
import { CleanupLog } from './block-objects.js';
import { discoverDisks, readBlockState, resolveDisk, type BlockState, type ResolvedDisk } from './block-state.js';
import { planTracking } from './change-tracking.js';
import { overlayNames } from './ferry-names.js';
import { cleanLeftovers } from './leftovers.js';
import { findGuestAgentSocket } from './guest-agent-channel.js';
import type { QmpClient } from './qmp-client.js';
import { connectVm, QemuVmSnapshot, type DiskPlan, type QemuVm } from './qemu-vm-snapshot.js';
import { chooseKind, SNAPSHOT_MODES, type SnapshotMode } from './snapshot-kind.js';
import { defaultNbdAddress, formatAddress, overlayFolder, parseAddress } from './socket-address.js';

/** The VM keys this host reads from `source.vms[i]` (validated by the registered `vmSchema`). */
export interface QemuVmOptions {
  qmp: string;
  nbd?: string;
  /** `fleecing` (default) or `auto`: external snapshots for hot-add where this proxy can read the image. */
  snapshot?: SnapshotMode;
}

/**
 * Source host for running QEMU VMs (or a qemu-storage-daemon) reached over QMP. A snapshot is
 * copy-before-write fleecing of every disk, or, with `snapshot: auto`, an external snapshot of each
 * disk whose image this proxy can open (for hot-add), started in one transaction together with the
 * rotation of the job's persistent dirty bitmaps, and served as read-only NBD exports.
 *
 * The QMP connection is opened per operation and closed again: a monitor serves one client at a
 * time, and another job on the same VM must be able to take its own snapshot meanwhile.
 */
export class QemuSourceHost implements SourceHost {
  private readonly vms = new Map<string, QemuVm>();

  constructor(private readonly job: JobContext) {}

  get label(): string {
    const addrs = [...new Set([...this.vms.values()].map((v) => formatAddress(v.qmp)))];
    return addrs.length ? `qemu:${addrs.join(',')}` : 'qemu';
  }

  async inventory(selections: readonly VmSelection[]): Promise<VmInventory[]> {
    const out: VmInventory[] = [];
    for (const [i, sel] of selections.entries()) {
      const vm = this.describeVm(sel, i);
      const qmp = await connectVm(vm);
      try {
        vm.disks = this.findDisks(await readBlockState(qmp), sel, i, qmp.label);
      } finally {
        await qmp.close();
      }
      this.vms.set(vm.name, vm);
      out.push({ name: vm.name, disks: vm.disks.map((d) => ({ name: d.name, size: d.size, format: d.drv })) });
    }
    return out;
  }

  async snapshot(inv: VmInventory, session: SessionInfo): Promise<VmSnapshot> {
    const vm = this.vms.get(inv.name);
    if (!vm) throw new FerryError('INTERNAL', `snapshot of VM ${inv.name} before its inventory`, { vm: inv.name });
    const qmp = await connectVm(vm);
    try {
      const parts = await this.prepare(qmp, vm, session);
      const snap = new QemuVmSnapshot(vm, session, parts);
      await snap.build(qmp).catch(async (err: unknown) => {
        const log = new CleanupLog();
        await snap.teardown(qmp, 'failed', log).catch((e: unknown) => log.failures.push(String(e)));
        throw withCleanupFailures(err, log);
      });
      return snap;
    } finally {
      await qmp.close();
    }
  }

  /** The VM's guest agent socket as QEMU's own chardev names it (`guest.agent` defaults to it). */
  async guestAgent(name: string): Promise<string | undefined> {
    const vm = this.vms.get(name);
    if (!vm) return undefined;
    const qmp = await connectVm(vm);
    try {
      const socket = await findGuestAgentSocket(qmp);
      return socket && `unix:${socket}`;
    } finally {
      await qmp.close();
    }
  }

  /**
   * The snapshot in three steps around a guest's freeze: leftovers, bitmap checks and overlays before
   * it, only the transaction inside it, the NBD exports after it. One QMP connection is held from
   * `prepareSnapshot` to `open` or `abandon`, so `take` costs one command.
   */
  async prepareSnapshot(inv: VmInventory, session: SessionInfo): Promise<PreparedSnapshot> {
    const vm = this.vms.get(inv.name);
    if (!vm) throw new FerryError('INTERNAL', `snapshot of VM ${inv.name} before its inventory`, { vm: inv.name });
    const qmp = await connectVm(vm);
    let snap: QemuVmSnapshot | undefined;
    const undo = async (err?: unknown): Promise<void> => {
      const log = new CleanupLog();
      if (snap) await snap.teardown(qmp, 'failed', log).catch((e: unknown) => log.failures.push(String(e)));
      await qmp.close();
      if (err !== undefined) throw withCleanupFailures(err, log);
      log.throwIfFailed(`abandoning the snapshot of session ${session.sessionId}`, { vm: vm.name, host: qmp.label });
    };
    try {
      snap = new QemuVmSnapshot(vm, session, await this.prepare(qmp, vm, session));
      await snap.addOverlays(qmp);
    } catch (err) {
      await undo(err);
      throw err;
    }
    const s = snap;
    let done = false;
    return {
      take: () => s.takePoint(qmp),
      open: async () => {
        await s.expose(qmp);
        done = true;
        await qmp.close();
        return s;
      },
      abandon: async () => {
        if (!done) await undo();
      },
    };
  }

  /**
   * Cleans leftovers of interrupted sessions, then decides per disk how it is snapshotted and what
   * the snapshot tracks.
   */
  private async prepare(qmp: QmpClient, vm: QemuVm, session: SessionInfo): Promise<DiskPlan[]> {
    const before = await readBlockState(qmp);
    const disks = this.currentDisks(before, vm, qmp.label);
    const folder = overlayFolder(vm.qmp);
    const sent = qmp.commandsSent;
    const left = await cleanLeftovers(qmp, before, { job: session.job, folder, previous: session.previous, disks });
    left.log.throwIfFailed('leftovers of an interrupted session are in the way', { vm: vm.name, host: qmp.label });
    // Read again only when the clean-up sent QEMU anything (usually there is nothing to clean).
    const state = qmp.commandsSent === sent ? before : await readBlockState(qmp);
    const plans: DiskPlan[] = [];
    for (const [n, disk] of disks.entries()) {
      const choice = await chooseKind(vm.snapshotMode, state, disk, { ...vm.where(), vm: vm.name, host: qmp.label });
      const node = state.node(disk.node)!;
      plans.push({
        disk,
        plan: planTracking({ job: session.job, sessionId: session.sessionId, disk: disk.name, node, previous: session.previous }),
        names: overlayNames(choice.kind, session.job, session.sessionId, n, folder),
        ...(choice.kind === 'external' && { image: node.filename }),
        notes: [...(left.diskNotes.get(disk.name) ?? []), ...left.notes, ...(choice.whyNotExternal ? [choice.whyNotExternal] : [])],
      });
    }
    return plans;
  }

  private describeVm(sel: VmSelection, i: number): QemuVm {
    const opts = sel.options as Partial<QemuVmOptions>;
    const where = (key?: 'qmp' | 'nbd' | 'snapshot'): ReturnType<JobContext['where']> => this.job.where(['source', 'vms', i, ...(key ? [key] : [])]);
    if (typeof opts.qmp !== 'string') {
      throw new FerryError('JOB_INVALID', `vm ${sel.name} needs "qmp:" (unix:/path/to/monitor.sock or tcp:host:port)`, { ...where(), vm: sel.name });
    }
    const qmp = parseAddress(opts.qmp, where('qmp'));
    const nbd = typeof opts.nbd === 'string' ? parseAddress(opts.nbd, where('nbd')) : defaultNbdAddress(qmp, sel.name);
    const snapshotMode = opts.snapshot ?? 'fleecing';
    if (!SNAPSHOT_MODES.includes(snapshotMode)) {
      throw new FerryError('JOB_INVALID', `vm ${sel.name}: "snapshot:" is fleecing or auto, not ${String(snapshotMode)}`, { ...where('snapshot'), vm: sel.name });
    }
    return { name: sel.name, qmp, nbd, snapshotMode, disks: [], where };
  }

  private findDisks(state: BlockState, sel: VmSelection, i: number, host: string): ResolvedDisk[] {
    if (!sel.disks) {
      const found = discoverDisks(state);
      if (found.length) return found;
      throw new FerryError('SOURCE_VM_NOT_FOUND', `vm ${sel.name} has no writable disk; name its disks with "disks:"`, {
        ...this.job.where(['source', 'vms', i, 'name']),
        vm: sel.name,
        host,
      });
    }
    return sel.disks.map((name, j) => {
      const d = resolveDisk(state, name);
      if (d) return d;
      throw new FerryError('SOURCE_DISK_NOT_FOUND', `vm ${sel.name} has no block node, drive or device named ${name} (${knownNames(state)})`, {
        ...this.job.where(['source', 'vms', i, 'disks', j]),
        vm: sel.name,
        disk: name,
        host,
      });
    });
  }

  /** The inventory's disks as they are now: a disk could have been resized or re-attached since. */
  private currentDisks(state: BlockState, vm: QemuVm, host: string): ResolvedDisk[] {
    return vm.disks.map((d) => {
      const now = resolveDisk(state, d.name);
      if (now) return now;
      throw new FerryError('SOURCE_DISK_NOT_FOUND', `disk ${d.name} of vm ${vm.name} disappeared after the inventory`, { vm: vm.name, disk: d.name, host });
    });
  }
}

function knownNames(state: BlockState): string {
  const names = [...state.nodes.keys()].filter((n) => !n.startsWith('#'));
  const devices = state.devices.map((d) => d.device || d.qdev).filter(Boolean);
  return `known: ${[...names, ...devices].join(', ') || 'none'}`;
}

function withCleanupFailures(err: unknown, log: CleanupLog): unknown {
  if (!log.failures.length) return err;
  const extra = `; undoing the half-built snapshot also failed: ${log.failures.join('; ')}`;
  if (err instanceof FerryError) return new FerryError(err.code, err.detail + extra, err.where, { cause: err });
  return new FerryError('PLUGIN_FAILED', `${err instanceof Error ? err.message : String(err)}${extra}`, {}, { cause: err });
}
