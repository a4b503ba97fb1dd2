import { createHash } from 'node:crypto';
import path from 'node:path';

/**
 * Names of everything this host creates inside QEMU. They carry the job (so two jobs on one VM
 * never touch each other's objects) and the session (so a crashed session's objects are told apart
 * from the running one's).
 *
 * QEMU limits node names to 31 characters, too short for a job and a session id; node names carry
 * 6-hex tags of both instead, and the overlay file, bitmap, export and job ids (no such limit)
 * are tied to a node name or carry the full names.
 */
export const FLEECE_PREFIX = 'ferry-fleece-';
/** Prefix of the overlays of external snapshots (the hot-add path): they sit on top of a disk. */
export const SNAPSHOT_PREFIX = 'ferry-snap-';

/**
 * How a disk's point-in-time view is made: `fleecing` (copy-before-write into an overlay that
 * backs onto the live disk; read over NBD) or `external` (an external snapshot: a new overlay takes
 * the guest's writes and the disk's own image stands still; hot-add reads that image directly).
 */
export type SnapshotKind = 'fleecing' | 'external';

const PREFIXES: Record<SnapshotKind, string> = { fleecing: FLEECE_PREFIX, external: SNAPSHOT_PREFIX };

/** Persistent dirty bitmap of a job's session: records every write from that session's snapshot on. */
export { trackingName as bitmapName, isJobTrackingName as isJobBitmap } from '@ferry/core/plugin';

export function jobTag(job: string): string {
  return tag(`job\0${job}`);
}

/** Prefix of every overlay node (and overlay file) of one kind of a job, whatever the session. */
export function jobOverlayPrefix(kind: SnapshotKind, job: string): string {
  return `${PREFIXES[kind]}${jobTag(job)}-`;
}

/** Prefix of every fleecing node (and overlay file) of a job, whatever the session. */
export function jobFleecePrefix(job: string): string {
  return jobOverlayPrefix('fleecing', job);
}

export interface OverlayNames {
  kind: SnapshotKind;
  /** The qcow2 overlay node; also the id of the block job that fills (fleecing) or commits (external) it. */
  node: string;
  /** The overlay's protocol (file) node. */
  fileNode: string;
  /** The overlay image file, created by QEMU. */
  file: string;
  /**
   * NBD export id and export name: `ferry-<session>-<n>` for fleecing; for an external snapshot, which
   * exports the disk's own node, the overlay's node name, so a leftover export is found by its overlay.
   */
  exportId: string;
}

/** The fleecing flavour of `OverlayNames`, kept under its first name. */
export type FleeceNames = OverlayNames;

/** Names for disk `n` (0-based, at most 99) of a job's session. */
export function overlayNames(kind: SnapshotKind, job: string, sessionId: string, n: number, folder: string): OverlayNames {
  if (!Number.isInteger(n) || n < 0 || n > 99) throw new RangeError(`disk index ${n} out of range 0..99`);
  const node = `${jobOverlayPrefix(kind, job)}${tag(`session\0${sessionId}`)}-${n}`;
  const exportId = kind === 'external' ? node : `ferry-${sessionId}-${n}`;
  return { kind, node, fileNode: `${node}.f`, file: path.join(folder, `${node}.qcow2`), exportId };
}

export function fleeceNames(job: string, sessionId: string, n: number, folder: string): OverlayNames {
  return overlayNames('fleecing', job, sessionId, n, folder);
}

/** True for an overlay node (or its file node) of `kind` of `job`, any session. */
export function isJobOverlayNode(kind: SnapshotKind, job: string, name: string): boolean {
  return new RegExp(`^${jobOverlayPrefix(kind, job)}[0-9a-f]{6}-\\d{1,2}(\\.f)?$`).test(name);
}

/** True for a fleecing node (overlay or its file node) of `job`, any session. */
export function isJobFleeceNode(job: string, name: string): boolean {
  return isJobOverlayNode('fleecing', job, name);
}

/** True for an overlay file name (no folder) this job's snapshots of either kind would have created. */
export function isJobOverlayFile(job: string, base: string): boolean {
  return (['fleecing', 'external'] as const).some((k) => new RegExp(`^${jobOverlayPrefix(k, job)}[0-9a-f]{6}-\\d{1,2}\\.qcow2$`).test(base));
}

/** The kind of a node Ferry created (any job), or undefined for every other node. */
export function ferryNodeKind(name: string): SnapshotKind | undefined {
  if (name.startsWith(FLEECE_PREFIX)) return 'fleecing';
  if (name.startsWith(SNAPSHOT_PREFIX)) return 'external';
  return undefined;
}

function tag(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 6);
}
