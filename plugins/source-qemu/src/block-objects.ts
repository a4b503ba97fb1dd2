import { promises as fs } from 'node:fs';
import { FerryError, type ErrorLocation } from '@ferry/core/plugin';
import type { BlockState } from './block-state.js';
import { isNotFound, QmpCommandError, type QmpClient } from './qmp-client.js';
import { formatAddress, legacyAddress, probeNbd, type SocketAddress } from './socket-address.js';

/*
 * What a snapshot creates inside QEMU (fleecing overlays, backup jobs, NBD exports, the NBD server)
 * and how each is taken apart again.
 */

/** Bounds of the waits for QEMU's asynchronous work (image creation, job cancel, export removal). */
const JOB_TIMEOUT_MS = 30_000;
const EVENT_TIMEOUT_MS = 10_000;

/**
 * Runs a `blockdev-create` job to its end and dismisses it. Image creation is a job in QEMU, and
 * its outcome is only in `query-jobs` once it concluded.
 */
export async function runCreateJob(qmp: QmpClient, jobId: string, options: Record<string, unknown>): Promise<void> {
  const mark = qmp.eventMark();
  await qmp.execute('blockdev-create', { 'job-id': jobId, options });
  await qmp.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === jobId && d.status === 'concluded', JOB_TIMEOUT_MS, mark);
  const jobs = await qmp.execute<{ id: string; error?: string }[]>('query-jobs');
  const error = jobs.find((j) => j.id === jobId)?.error;
  await qmp.execute('job-dismiss', { id: jobId });
  if (error) throw new FerryError('PLUGIN_FAILED', `QEMU could not create ${String(options.driver)} image for ${jobId}: ${error}`, { host: qmp.label });
}

/**
 * Creates a fleecing overlay: an empty qcow2 image of the disk's size whose backing is the disk's
 * node, so a read of a block the backup job has not copied yet falls through to the live disk.
 * QEMU creates the file itself, so this works when QMP is on another machine too.
 */
export async function addOverlay(
  qmp: QmpClient,
  o: { node: string; fileNode: string; file: string; size: number; backing: string },
): Promise<void> {
  await runCreateJob(qmp, `${o.node}-create-file`, { driver: 'file', filename: o.file, size: 0 });
  await qmp.execute('blockdev-add', { driver: 'file', 'node-name': o.fileNode, filename: o.file });
  await runCreateJob(qmp, `${o.node}-create-qcow2`, { driver: 'qcow2', file: o.fileNode, size: o.size });
  await qmp.execute('blockdev-add', { driver: 'qcow2', 'node-name': o.node, file: o.fileNode, backing: o.backing });
}

/** Removes an NBD export at once (clients still attached are dropped) and waits until it is gone. */
export async function deleteExport(qmp: QmpClient, id: string): Promise<void> {
  const mark = qmp.eventMark();
  await qmp.execute('block-export-del', { id, mode: 'hard' });
  await qmp.waitForEvent('BLOCK_EXPORT_DELETED', (d) => d.id === id, EVENT_TIMEOUT_MS, mark);
}

/** Cancels a block job (the fleecing backup runs until cancelled) and waits until it has left. */
export async function cancelJob(qmp: QmpClient, id: string): Promise<void> {
  const mark = qmp.eventMark();
  await qmp.execute('block-job-cancel', { device: id, force: true });
  await qmp.waitForEvent('JOB_STATUS_CHANGE', (d) => d.id === id && (d.status === 'null' || d.status === 'concluded'), EVENT_TIMEOUT_MS, mark);
  const left = (await qmp.execute<{ id: string; status: string }[]>('query-jobs')).find((j) => j.id === id);
  if (left?.status === 'concluded') await qmp.execute('job-dismiss', { id });
}

export interface OverlayObjects {
  /** Overlay node; also the backup job id. */
  node: string;
  fileNode: string;
  /** Overlay file; removed from this machine's view of the file system when known. */
  file?: string;
  /** Export ids that read the overlay. */
  exports: string[];
}

/**
 * Takes one fleecing overlay apart in the only order QEMU accepts: exports, then the backup job
 * (it holds the overlay as its target), then the overlay node, its file node, and the file.
 * Acts only on what `state` shows, so it also serves for a half-built or already-cleaned overlay.
 */
export async function removeOverlay(qmp: QmpClient, state: BlockState, o: OverlayObjects, log: CleanupLog): Promise<void> {
  for (const id of o.exports) {
    if (state.exports.some((e) => e.id === id)) await log.step(`NBD export ${id}`, () => deleteExport(qmp, id));
  }
  if (state.jobs.some((j) => j.id === o.node)) await log.step(`backup job ${o.node}`, () => cancelJob(qmp, o.node));
  if (state.node(o.node)) await log.step(`node ${o.node}`, () => qmp.execute('blockdev-del', { 'node-name': o.node }));
  if (state.node(o.fileNode)) await log.step(`node ${o.fileNode}`, () => qmp.execute('blockdev-del', { 'node-name': o.fileNode }));
  const file = o.file;
  if (file) await log.step(`overlay file ${file}`, () => fs.rm(file, { force: true }));
}

/**
 * Makes sure QEMU's built-in NBD server listens at `address`. QEMU runs at most one; when one already
 * runs (started by the VM's manager, by qemu-storage-daemon's `--nbd-server`, or by another job),
 * it is used as it is, provided it answers at `address`. Resolves `true` when this call started it,
 * so only the starter stops it again.
 */
export async function ensureNbdServer(qmp: QmpClient, address: SocketAddress, where: ErrorLocation): Promise<boolean> {
  try {
    await qmp.execute('nbd-server-start', { addr: legacyAddress(address) });
    return true;
  } catch (err) {
    if (!(err instanceof QmpCommandError) || !/already running/i.test(err.description)) throw err;
  }
  if (await probeNbd(address)) return false;
  throw new FerryError(
    'SOURCE_UNREACHABLE',
    `QEMU already runs an NBD server, but nothing answers NBD at ${formatAddress(address)}: set the VM's "nbd:" key to the address that server listens on`,
    { ...where, host: qmp.label },
  );
}

/**
 * Stops the NBD server this session started, unless other exports still use it: stopping the server
 * removes every NBD export, and another job may be reading one. Resolves whether it stopped it.
 */
export async function stopNbdServerIfIdle(qmp: QmpClient): Promise<boolean> {
  const exports = await qmp.execute<{ type: string }[]>('query-block-exports');
  if (exports.some((e) => e.type === 'nbd')) return false;
  await qmp.execute('nbd-server-stop');
  return true;
}

/** Adds a read-only NBD export of `node`; `bitmap` makes `qemu:dirty-bitmap:<bitmap>` available to clients. */
export async function addNbdExport(qmp: QmpClient, id: string, node: string, bitmap?: string): Promise<void> {
  await qmp.execute('block-export-add', {
    type: 'nbd',
    id,
    'node-name': node,
    name: id,
    writable: false,
    ...(bitmap && { bitmaps: [bitmap] }),
  });
}

/**
 * Runs clean-up steps one after the other and keeps going when one fails, so one stuck object never
 * leaves the others behind. "Not found" counts as done: what is already gone needs no cleaning.
 * At the end, `throwIfFailed` raises one error naming everything that could not be cleaned.
 */
export class CleanupLog {
  readonly failures: string[] = [];

  /** Resolves true when the step succeeded or found nothing to do, false when it failed. */
  async step(what: string, fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (err) {
      if (isNotFound(err)) return true;
      this.failures.push(`${what}: ${err instanceof Error ? err.message : String(err)}`);
      return false;
    }
  }

  /** Adds the failures of another log (a nested clean-up) to this one. */
  absorb(other: CleanupLog): void {
    this.failures.push(...other.failures);
  }

  throwIfFailed(context: string, where: ErrorLocation): void {
    if (!this.failures.length) return;
    throw new FerryError('PLUGIN_FAILED', `${context}; could not clean up: ${this.failures.join('; ')}`, where);
  }
}
