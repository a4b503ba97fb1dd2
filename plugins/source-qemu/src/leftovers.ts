import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { PreviousPoint } from '@ferry/core/plugin';
import { CleanupLog, removeOverlay } from './block-objects.js';
import { readBlockState, type BlockNode, type BlockState } from './block-state.js';
import { previousTracking } from './change-tracking.js';
import { removeSnapshotOverlay } from './external-snapshot.js';
import { isJobBitmap, isJobOverlayFile, isJobOverlayNode, jobOverlayPrefix, type SnapshotKind } from './ferry-names.js';
import type { QmpClient } from './qmp-client.js';

export interface LeftoverReport {
  /** What was found and cleaned, in words for the session report. */
  notes: string[];
  /** Per disk (by name): what happened to its bitmaps. */
  diskNotes: Map<string, string[]>;
  log: CleanupLog;
}

/**
 * Cleans what an interrupted session of this job left in QEMU (a job runs one session at a time,
 * so every object with the job's tag is a leftover when a snapshot starts): exports, the fleecing
 * job, overlay nodes and files, external snapshots (committed back into their disks first, then
 * removed), and bitmaps the previous restore point does not name. Other jobs' objects carry other
 * tags and are never touched.
 */
export async function cleanLeftovers(
  qmp: QmpClient,
  state: BlockState,
  s: { job: string; folder: string; previous?: PreviousPoint; disks: { name: string; node: string }[] },
): Promise<LeftoverReport> {
  const report: LeftoverReport = { notes: [], diskNotes: new Map(), log: new CleanupLog() };
  // Image-creation jobs are not dismissed automatically; a session that died mid-creation leaves one.
  const ours = (id: string): boolean => id.startsWith(jobOverlayPrefix('fleecing', s.job)) || id.startsWith(jobOverlayPrefix('external', s.job));
  for (const j of state.jobs.filter((x) => x.type === 'create' && ours(x.id))) {
    const verb = j.status === 'concluded' ? 'job-dismiss' : 'job-cancel';
    await report.log.step(`image creation job ${j.id}`, () => qmp.execute(verb, { id: j.id }));
  }
  await removeOverlays(qmp, state, s.job, 'fleecing', report);
  const committed = await removeOverlays(qmp, state, s.job, 'external', report);
  await sweepOverlayFiles(s.job, s.folder, state, report);
  // An overlay that could not be committed keeps its disk's node read-only, and the bitmaps there
  // hold writes: touch none of them until a later session has committed it.
  if (report.log.failures.length) return report;
  // A commit made the disk's node writable again and changed its bitmaps: decide on a fresh reading.
  const now = committed ? await readBlockState(qmp) : state;
  for (const d of s.disks) {
    const node = now.node(d.node);
    if (node) await cleanBitmaps(qmp, node, { ...s, disk: d.name }, report);
  }
  return report;
}

/**
 * Overlay nodes of one kind of this job with their exports and block jobs. A file node whose overlay
 * node is gone (a session interrupted while building) counts as an overlay of its own. An external
 * snapshot's overlay holds guest writes: it is committed into the disk, never just dropped (if the
 * commit fails, it stays, and the clean-up fails). Resolves whether any overlay was handled.
 */
async function removeOverlays(qmp: QmpClient, state: BlockState, job: string, kind: SnapshotKind, report: LeftoverReport): Promise<boolean> {
  const bases = new Set([...state.nodes.keys()].filter((n) => isJobOverlayNode(kind, job, n)).map((n) => n.replace(/\.f$/, '')));
  // A crash during release can leave the commit job alone, its overlay already gone.
  for (const j of state.jobs) if (j.type === 'commit' && isJobOverlayNode(kind, job, j.id)) bases.add(j.id);
  for (const node of bases) {
    const fileNode = state.node(`${node}.f`);
    const file = fileNode && isJobOverlayFile(job, path.basename(fileNode.filename)) ? fileNode.filename : undefined;
    // An external snapshot exports the disk's node under the overlay's name; exports that now read
    // the overlay are the guest's own (everything that used the disk moved onto it) and stay.
    const ours = (e: { id: string; nodeName: string }): boolean => (kind === 'fleecing' ? e.nodeName === node : e.id === node);
    const exports = state.exports.filter(ours).map((e) => e.id);
    const o = { node, fileNode: `${node}.f`, file, exports };
    if (kind === 'fleecing') await removeOverlay(qmp, state, o, report.log);
    else if (!(await removeSnapshotOverlay(qmp, state, o, report.log))) continue;
    const what = kind === 'fleecing' ? 'removed fleecing overlay' : 'committed and removed the external snapshot overlay';
    report.notes.push(`${what} ${node}${exports.length ? ` and export ${exports.join(', ')}` : ''} of an interrupted session`);
  }
  return bases.size > 0;
}

/** Overlay files of this job that no QEMU node uses any more (the QEMU that had them open is gone). */
async function sweepOverlayFiles(job: string, folder: string, state: BlockState, report: LeftoverReport): Promise<void> {
  const inUse = new Set([...state.nodes.values()].map((n) => n.filename));
  const names = await fs.readdir(folder).catch(() => [] as string[]);
  for (const name of names.filter((n) => isJobOverlayFile(job, n))) {
    const file = path.join(folder, name);
    if (inUse.has(file)) continue;
    await report.log.step(`overlay file ${file}`, () => fs.rm(file, { force: true }));
    report.notes.push(`removed overlay file ${file} of an interrupted session`);
  }
}

/**
 * Bitmaps of this job on a disk's node that the previous point does not name come from interrupted
 * sessions. If such a session had already stopped the previous point's bitmap (its snapshot
 * transaction disables it and starts its own), the writes since are split between the two: they are
 * merged back into the previous point's bitmap, which records again, so the next run stays
 * incremental. Re-enabling comes first, in one transaction with the merge and the removal, so no
 * write falls between them.
 */
async function cleanBitmaps(
  qmp: QmpClient,
  node: BlockNode,
  s: { job: string; disk: string; previous?: PreviousPoint },
  report: LeftoverReport,
): Promise<void> {
  const ct = previousTracking(s);
  const prevName = ct && ct.node === node.nodeName ? ct.id : undefined;
  const prev = node.bitmaps.find((b) => b.name === prevName);
  const stale = node.bitmaps.filter((b) => isJobBitmap(s.job, b.name) && b.name !== prevName);
  if (!stale.length) return;
  const names = stale.map((b) => b.name!);
  const notes = report.diskNotes.get(s.disk) ?? [];
  report.diskNotes.set(s.disk, notes);
  const canMerge = prev && !prev.recording && !prev.inconsistent && stale.some((b) => b.recording) && stale.every((b) => !b.inconsistent && !b.busy);
  if (canMerge) {
    const ok = await qmp
      .execute('transaction', {
        actions: [
          { type: 'block-dirty-bitmap-enable', data: { node: node.nodeName, name: prevName } },
          { type: 'block-dirty-bitmap-merge', data: { node: node.nodeName, target: prevName, bitmaps: names } },
          ...names.map((name) => ({ type: 'block-dirty-bitmap-remove', data: { node: node.nodeName, name } })),
        ],
      })
      .then(() => true)
      .catch(() => false);
    if (ok) {
      notes.push(`bitmap ${prevName} had been stopped by an interrupted session; merged back ${names.join(', ')} and recording again`);
      return;
    }
  }
  for (const name of names) {
    await report.log.step(`bitmap ${name} on ${node.nodeName}`, () => qmp.execute('block-dirty-bitmap-remove', { node: node.nodeName, name }));
  }
  notes.push(`removed leftover bitmap${names.length > 1 ? 's' : ''} ${names.join(', ')} of an interrupted session`);
}
