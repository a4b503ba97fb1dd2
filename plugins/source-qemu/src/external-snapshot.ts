import { promises as fs } from 'node:fs';
import { FerryError } from '@ferry/core/plugin';
import { CleanupLog, deleteExport, runCreateJob, type OverlayObjects } from './block-objects.js';
import type { BlockState } from './block-state.js';
import { QmpCommandError, type QmpClient } from './qmp-client.js';

/*
 * The QEMU objects of an external snapshot (the hot-add path): a qcow2 overlay that `blockdev-snapshot`
 * puts on top of a disk's node, so the guest writes into the overlay and the disk's own image stands
 * still for the proxy to read; afterwards an active `block-commit` writes the overlay back into the
 * disk and takes it out of the chain.
 */

/**
 * How long a block job may show no progress before the wait gives up. A commit copies what the guest
 * wrote during the backup, which on a busy disk takes long; only a job that stands still is stuck.
 */
const STALL_MS = 60_000;
const POLL_MS = 100;

/**
 * Creates the overlay of an external snapshot: an empty qcow2 image of the disk's size, added without
 * a backing node (`blockdev-snapshot` attaches it). Its header names the disk's image as backing file
 * and format, so `qemu-img` can make sense of a file left behind after QEMU died.
 */
export async function addSnapshotOverlay(
  qmp: QmpClient,
  o: { node: string; fileNode: string; file: string; size: number; backingFile: string },
): Promise<void> {
  await runCreateJob(qmp, `${o.node}-create-file`, { driver: 'file', filename: o.file, size: 0 });
  await qmp.execute('blockdev-add', { driver: 'file', 'node-name': o.fileNode, filename: o.file });
  await runCreateJob(qmp, `${o.node}-create-qcow2`, {
    driver: 'qcow2',
    file: o.fileNode,
    size: o.size,
    'backing-file': o.backingFile,
    'backing-fmt': 'qcow2',
  });
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': o.node, file: o.fileNode, backing: null });
}

/** The transaction action that makes `overlay` the disk's active layer and `node` read-only. */
export function snapshotAction(node: string, overlay: string): Record<string, unknown> {
  return { type: 'blockdev-snapshot', data: { node, overlay } };
}

/**
 * Takes one external-snapshot overlay apart: its exports, then (when it is in a disk's chain) an
 * active commit into the node below, then the overlay's nodes and file. Acts only on what `state`
 * shows. Resolves true when the overlay is out of the chain (committed, or never attached): only then
 * is the disk's node writable again, and its bitmaps can be changed. On false the overlay stays in
 * place, holding the guest's writes, and the next session of the job commits it.
 */
export async function removeSnapshotOverlay(qmp: QmpClient, state: BlockState, o: OverlayObjects, log: CleanupLog): Promise<boolean> {
  for (const id of o.exports) {
    if (state.exports.some((e) => e.id === id)) await log.step(`NBD export ${id}`, () => deleteExport(qmp, id));
  }
  const base = inChainAbove(state, o.node);
  if (base || state.jobs.some((j) => j.id === o.node && j.type === 'commit')) {
    const committed = await log.step(`commit of overlay ${o.node} into ${base ?? 'its backing node'}`, () => commitOverlay(qmp, state, o.node, base));
    if (!committed) return false;
  }
  if (state.node(o.node)) await log.step(`node ${o.node}`, () => qmp.execute('blockdev-del', { 'node-name': o.node }));
  if (state.node(o.fileNode)) await log.step(`node ${o.fileNode}`, () => qmp.execute('blockdev-del', { 'node-name': o.fileNode }));
  const file = o.file;
  if (file) await log.step(`overlay file ${file}`, () => fs.rm(file, { force: true }));
  return true;
}

/**
 * The node below `overlay` when the overlay is still on top of it. An overlay that was committed
 * already (by a dead session or by someone else) still names its backing node, but nothing uses it
 * and the node below is writable again; committing it again would write its old data over what the
 * guest wrote since: never. A node below that is still read-only (even when nothing uses the
 * overlay, as on a daemon without exports) needs the commit to become writable again.
 */
function inChainAbove(state: BlockState, overlay: string): string | undefined {
  const base = state.node(overlay) ? state.backingOf(overlay) : undefined;
  if (!base) return undefined;
  const used = (state.parents?.get(overlay) ?? []).length > 0 || state.node(base)?.ro === true;
  return used ? base : undefined;
}

/**
 * Writes the overlay back into `base` with an active commit and takes it out of the chain: start (or
 * pick up, after a crash, the job a dead session started), wait until it is ready, complete it, wait
 * until it has concluded, dismiss it. The job id is the overlay's node name. Any failure is a
 * FerryError that never counts as "already gone": the overlay then still holds guest data.
 */
export async function commitOverlay(qmp: QmpClient, state: BlockState, overlay: string, base: string | undefined): Promise<void> {
  try {
    // Only a commit job is picked up: any other job with this id is in the way, and QEMU says so.
    let job = state.jobs.find((j) => j.id === overlay && j.type === 'commit');
    if (job?.status === 'concluded') {
      await qmp.execute('job-dismiss', { id: overlay });
      job = undefined;
    }
    if (!job) {
      if (!base) return;
      await qmp.execute('block-commit', { 'job-id': overlay, device: overlay, 'base-node': base, 'auto-dismiss': false });
    }
    const ready = await waitForJob(qmp, overlay, ['ready', 'concluded']);
    if (ready.status === 'ready') await qmp.execute('block-job-complete', { device: overlay });
    const done = await waitForJob(qmp, overlay, ['concluded']);
    await qmp.execute('job-dismiss', { id: overlay });
    if (done.error) throw new FerryError('PLUGIN_FAILED', `QEMU could not commit ${overlay}: ${done.error}`, { host: qmp.label });
  } catch (err) {
    if (err instanceof QmpCommandError) throw new FerryError('PLUGIN_FAILED', err.detail, err.where, { cause: err });
    throw err;
  }
}

interface JobInfo {
  id: string;
  status: string;
  'current-progress': number;
  error?: string;
}

/**
 * Polls `query-jobs` until job `id` reaches one of `statuses` (a failed job concludes too, with
 * `error`). Bounded by progress: the wait fails when the job's progress stands still for STALL_MS.
 */
async function waitForJob(qmp: QmpClient, id: string, statuses: string[]): Promise<JobInfo> {
  let progress = -1;
  let movedAt = Date.now();
  for (;;) {
    const job = (await qmp.execute<JobInfo[]>('query-jobs')).find((j) => j.id === id);
    if (!job) throw new FerryError('PLUGIN_FAILED', `block job ${id} disappeared before it reached ${statuses.join(' or ')}`, { host: qmp.label });
    if (statuses.includes(job.status) || job.status === 'concluded') return job;
    if (job['current-progress'] !== progress) {
      progress = job['current-progress'];
      movedAt = Date.now();
    } else if (Date.now() - movedAt > STALL_MS) {
      throw new FerryError('PLUGIN_FAILED', `block job ${id} made no progress for ${STALL_MS / 1000} s (status ${job.status})`, { host: qmp.label });
    }
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}
