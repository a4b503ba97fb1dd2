import { constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError, type ErrorLocation } from '@ferry/core/plugin';
import type { BlockState, ResolvedDisk } from './block-state.js';
import { ferryNodeKind, type SnapshotKind } from './ferry-names.js';

/**
 * The VM key `snapshot:`. `fleecing` (the default): copy-before-write fleecing, read over NBD.
 * `auto`: an external snapshot, so that hot-add can read the disk's image file directly, for each disk
 * whose image this proxy can open; fleecing for the others.
 */
export type SnapshotMode = 'fleecing' | 'auto';

export const SNAPSHOT_MODES: readonly SnapshotMode[] = ['fleecing', 'auto'];

export interface KindChoice {
  kind: SnapshotKind;
  /** Why this disk gets fleecing although the job asked for `auto` (for notes); absent otherwise. */
  whyNotExternal?: string;
}

/**
 * Picks how one disk is snapshotted. Refuses (PLUGIN_FAILED) a disk that another job's external
 * snapshot holds: its node is read-only until that job commits the overlay, so no bitmap of this job
 * could be started, stopped or merged on it. Another job's fleecing is no obstacle to fleecing, but it
 * is to an external snapshot, whose commit would write below that job's copy-before-write filter.
 */
export async function chooseKind(mode: SnapshotMode, state: BlockState, disk: ResolvedDisk, where: ErrorLocation): Promise<KindChoice> {
  const others = overlaysOn(state, disk.node);
  const held = others.find((o) => o.kind === 'external');
  if (held) {
    throw new FerryError(
      'PLUGIN_FAILED',
      `disk ${disk.name} is under the external snapshot ${held.node} of another Ferry job (or of one that died): its node ${disk.node} stays read-only until that job's release (or its next session) commits the overlay; run this job again after that`,
      { ...where, disk: disk.name },
    );
  }
  if (mode === 'fleecing') return { kind: 'fleecing' };
  const node = state.node(disk.node);
  const fleecing = (why: string): KindChoice => ({ kind: 'fleecing', whyNotExternal: `hot-add not offered for ${disk.name}: ${why}` });
  if (!node || node.drv !== 'qcow2') return fleecing(`its node ${disk.node} is ${node?.drv ?? 'gone'}, and external snapshots are taken of qcow2 disks only`);
  if (node.ro) return fleecing(`its node ${disk.node} is read-only`);
  if (others.length) return fleecing(`another job's fleecing snapshot (${others[0].node}) is open on it`);
  const unreadable = await whyUnreadable(node.filename);
  if (unreadable) return fleecing(unreadable);
  return { kind: 'external' };
}

/** Ferry overlays (of any job) whose backing is `node`: open snapshots of the disk. */
export function overlaysOn(state: BlockState, node: string): { node: string; kind: SnapshotKind }[] {
  const out: { node: string; kind: SnapshotKind }[] = [];
  for (const name of state.nodes.keys()) {
    const kind = ferryNodeKind(name);
    if (kind && !name.endsWith('.f') && state.backingOf(name) === node) out.push({ node: name, kind });
  }
  return out;
}

/** Why this proxy cannot open the image QEMU names, or undefined when it can. */
async function whyUnreadable(file: string): Promise<string | undefined> {
  if (!path.isAbsolute(file)) return `QEMU names its image "${file}", not an absolute path this proxy could open`;
  try {
    const st = await fs.stat(file);
    if (!st.isFile() && !st.isBlockDevice()) return `${file} is neither a file nor a block device here`;
    await fs.access(file, constants.R_OK);
    return undefined;
  } catch (err) {
    return `its image ${file} cannot be opened from this proxy: ${(err as NodeJS.ErrnoException).code ?? String(err)}`;
  }
}
