import { createHash } from 'node:crypto';
import path from 'node:path';
import { isJobTrackingName, type ChangeTracking, type PreviousPoint } from '@ferry/core/plugin';
import type { CheckpointInfo } from './libvirt-xml.js';

/** Formats whose images keep the dirty bitmaps behind libvirt's checkpoints. */
export const BITMAP_FORMATS = new Set(['qcow2']);

/**
 * The file names of one session's NBD socket and scratch images: `ferry-<job>-<domain>-<session>`,
 * each part an 8-hex tag. The job and domain tags alone make the prefix every leftover of this job
 * on this domain starts with. Short, so the socket path stays within the 107 bytes a unix socket
 * path may have.
 */
export interface SessionFiles {
  prefix: string;
  socket: string;
  scratch(dev: string): string;
  /** A shut-off domain's disk served by qemu-nbd. */
  imageSocket(dev: string): string;
}

export function sessionFiles(folder: string, job: string, domainUuid: string, sessionId: string): SessionFiles {
  const prefix = `ferry-${tag(`job\0${job}`)}-${tag(`domain\0${domainUuid}`)}-`;
  const base = path.join(folder, `${prefix}${tag(`session\0${sessionId}`)}`);
  return { prefix, socket: `${base}.sock`, scratch: (dev) => `${base}-${dev}.scratch.qcow2`, imageSocket: (dev) => `${base}-${dev}.sock` };
}

function tag(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 8);
}

/** What a restore point records of a disk's tracking: the checkpoint and the domain it lives on. */
export function tracking(checkpoint: string, domainUuid: string): ChangeTracking {
  return { id: checkpoint, domain: domainUuid };
}

export interface ChainFacts {
  job: string;
  domain: { name: string; uuid: string };
  disk: { dev: string; format?: string; path?: string; size: number };
  previous?: PreviousPoint;
  /** The domain's checkpoints by name (only this job's need to be there). */
  checkpoints: ReadonlyMap<string, CheckpointInfo>;
}

/**
 * Why the disk cannot be read incrementally from the previous point's checkpoint, or undefined
 * when that checkpoint vouches for every write since: it is one of this job's, on this very
 * domain, still known to libvirt, it tracked this disk, and the disk kept its size. libvirt itself
 * then checks the bitmap in the image when the backup starts (a bitmap QEMU could not save is
 * refused there, and the session reads the disk in full).
 */
export function whyFull(f: ChainFacts): string | undefined {
  const { disk, domain, previous } = f;
  if (!BITMAP_FORMATS.has(disk.format ?? '')) {
    return `disk ${disk.dev} is a ${disk.format ?? 'unknown-format'} image: libvirt tracks changed blocks only in qcow2 images, so every run reads the whole disk`;
  }
  if (!previous) return 'no previous restore point of this job';
  const pd = previous.disks.find((d) => d.name === disk.dev);
  if (!pd) return `the previous restore point ${previous.id} has no disk ${disk.dev} (added since)`;
  const ct = pd.changeTracking;
  if (!ct) return `the previous restore point ${previous.id} recorded no checkpoint for disk ${disk.dev}`;
  if (!isJobTrackingName(f.job, ct.id)) return `checkpoint ${ct.id} of the previous restore point is not one of job ${f.job}'s`;
  if (ct.domain !== domain.uuid) {
    return `the previous restore point was taken from domain UUID ${ct.domain ?? '(unknown)'}; domain ${domain.name} is now UUID ${domain.uuid} (defined anew)`;
  }
  const cp = f.checkpoints.get(ct.id);
  if (!cp) {
    return `checkpoint ${ct.id} of the previous restore point is missing on domain ${domain.name} (deleted, or the domain was restarted: a transient domain loses its checkpoints when it stops)`;
  }
  if (!cp.bitmaps.has(disk.dev)) return `checkpoint ${ct.id} does not track disk ${disk.dev} (the disk was added after it)`;
  if (pd.sizeBytes !== disk.size) return `disk ${disk.dev} was resized (${pd.sizeBytes} → ${disk.size} bytes)`;
  return undefined;
}

/** The checkpoints of the previous point that are still to be kept (all disks name the same one). */
export function previousCheckpoints(previous: PreviousPoint | undefined, job: string, domainUuid: string): Set<string> {
  const out = new Set<string>();
  for (const d of previous?.disks ?? []) {
    const ct = d.changeTracking;
    if (ct && ct.domain === domainUuid && isJobTrackingName(job, ct.id)) out.add(ct.id);
  }
  return out;
}
