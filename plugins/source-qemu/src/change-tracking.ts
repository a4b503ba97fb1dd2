import type { PreviousPoint } from '@ferry/core/plugin';
import type { BlockNode } from './block-state.js';
import { bitmapName, isJobBitmap } from './ferry-names.js';

/** Formats whose images keep persistent dirty bitmaps across QEMU restarts. */
const BITMAP_FORMATS = new Set(['qcow2']);

/** What one disk's snapshot does with dirty bitmaps. */
export interface TrackingPlan {
  /** The format node the bitmaps live on. */
  node: string;
  /** Bitmap the snapshot transaction adds (records writes from now on); absent when the format cannot. */
  newBitmap?: string;
  /** Incremental: the previous point's bitmap, disabled in the transaction and exported with the disk. */
  previousBitmap?: string;
  /** Incremental: the restore point the exported bitmap counts from. */
  since?: string;
  /** Full: why the previous bitmap cannot vouch for every write. */
  fullReason?: string;
}

export interface PlanInput {
  job: string;
  sessionId: string;
  /** The disk's name in restore points. */
  disk: string;
  node: BlockNode;
  previous?: PreviousPoint;
}

/**
 * Decides incremental or full for one disk. Incremental only when the bitmap the previous point
 * started is still there, on the same node, persistent, recording, consistent and free, and the
 * disk kept its size: then it holds every write since that point. Anything else is a full read
 * with the reason, never a silent incremental that could miss data.
 */
export function planTracking(input: PlanInput): TrackingPlan {
  const { node } = input;
  if (!BITMAP_FORMATS.has(node.drv)) {
    return {
      node: node.nodeName,
      fullReason: `disk node ${node.nodeName} is ${node.drv}: QEMU keeps persistent dirty bitmaps only in qcow2 images, so every run reads the whole disk`,
    };
  }
  const newBitmap = bitmapName(input.job, input.sessionId);
  const reason = whyNotIncremental(input);
  if (reason) return { node: node.nodeName, newBitmap, fullReason: reason };
  const previousBitmap = previousTracking(input)!.id;
  return { node: node.nodeName, newBitmap, previousBitmap, since: input.previous!.id };
}

/** The previous point's record of this disk's change tracking, if it has one. */
export function previousTracking(input: Pick<PlanInput, 'disk' | 'previous'>): { id: string; node?: string } | undefined {
  return input.previous?.disks.find((d) => d.name === input.disk)?.changeTracking;
}

function whyNotIncremental(input: PlanInput): string | undefined {
  const { previous, node } = input;
  if (!previous) return 'no previous restore point of this job';
  const pd = previous.disks.find((d) => d.name === input.disk);
  if (!pd) return `the previous restore point ${previous.id} has no disk ${input.disk}`;
  const ct = pd.changeTracking;
  if (!ct) return `the previous restore point ${previous.id} recorded no dirty bitmap for this disk`;
  if (!isJobBitmap(input.job, ct.id)) return `bitmap ${ct.id} of the previous restore point is not one of job ${input.job}'s bitmaps`;
  if (ct.node !== node.nodeName) return `bitmap ${ct.id} was on node ${ct.node ?? '(unknown)'}, the disk is now node ${node.nodeName}`;
  const bm = node.bitmaps.find((b) => b.name === ct.id);
  if (!bm) return `bitmap ${ct.id} is missing on node ${node.nodeName} (deleted, or QEMU stopped before saving it?)`;
  if (bm.inconsistent) return `bitmap ${ct.id} is inconsistent (QEMU stopped without saving it)`;
  if (!bm.persistent) return `bitmap ${ct.id} is not persistent`;
  if (!bm.recording) return `bitmap ${ct.id} is not recording (disabled outside this job)`;
  if (bm.busy) return `bitmap ${ct.id} is in use by another operation`;
  if (pd.sizeBytes !== node.virtualSize) return `disk was resized (${pd.sizeBytes} → ${node.virtualSize} bytes)`;
  return undefined;
}
