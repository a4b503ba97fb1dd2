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

/** Persistent dirty bitmap of a job's session: records every write from that session's snapshot on. */
export function bitmapName(job: string, sessionId: string): string {
  return `ferry.${job}.${sessionId}`;
}

/**
 * True for a bitmap of `job` (any session). The rest after `ferry.<job>.` must hold no dot, so job
 * `a` never claims job `a.b`'s bitmaps (`ferry.a.b.<session>`); session ids never contain dots.
 */
export function isJobBitmap(job: string, name: string | undefined): boolean {
  const prefix = `ferry.${job}.`;
  return name !== undefined && name.startsWith(prefix) && name.length > prefix.length && !name.slice(prefix.length).includes('.');
}

export function jobTag(job: string): string {
  return tag(`job\0${job}`);
}

/** Prefix of every fleecing node (and overlay file) of a job, whatever the session. */
export function jobFleecePrefix(job: string): string {
  return `${FLEECE_PREFIX}${jobTag(job)}-`;
}

export interface FleeceNames {
  /** The qcow2 overlay node; also the id of the backup job that fills it. */
  node: string;
  /** The overlay's protocol (file) node. */
  fileNode: string;
  /** The overlay image file, created by QEMU. */
  file: string;
  /** NBD export id and export name. */
  exportId: string;
}

/** Names for disk `n` (0-based, at most 99) of a job's session. */
export function fleeceNames(job: string, sessionId: string, n: number, folder: string): FleeceNames {
  if (!Number.isInteger(n) || n < 0 || n > 99) throw new RangeError(`disk index ${n} out of range 0..99`);
  const node = `${jobFleecePrefix(job)}${tag(`session\0${sessionId}`)}-${n}`;
  return { node, fileNode: `${node}.f`, file: path.join(folder, `${node}.qcow2`), exportId: `ferry-${sessionId}-${n}` };
}

/** True for a fleecing node (overlay or its file node) of `job`, any session. */
export function isJobFleeceNode(job: string, name: string): boolean {
  return new RegExp(`^${jobFleecePrefix(job)}[0-9a-f]{6}-\\d{1,2}(\\.f)?$`).test(name);
}

/** True for an overlay file name (no folder) this job's fleecing would have created. */
export function isJobOverlayFile(job: string, base: string): boolean {
  return new RegExp(`^${jobFleecePrefix(job)}[0-9a-f]{6}-\\d{1,2}\\.qcow2$`).test(base);
}

function tag(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 6);
}
