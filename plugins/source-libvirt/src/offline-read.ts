import { FerryError, isJobTrackingName, type SessionInfo, type SourceDisk, type VmDefinition, type VmSnapshot } from '@ferry/core/plugin';
import { previousCheckpoints, sessionFiles, tracking, whyFull, type SessionFiles } from './chain.js';
import type { Domain } from './domain.js';
import { exportImage, imageBitmaps, type ImageExport } from './image-export.js';
import type { CheckpointInfo, DomainDisk, DomainInfo } from './libvirt-xml.js';
import type { PlannedDisk } from './live-backup.js';

export interface OfflineReadInput {
  domain: Domain;
  info: DomainInfo;
  disks: (PlannedDisk & { source: DomainDisk })[];
  session: SessionInfo;
  state: string;
  /** Folder for the qemu-nbd sockets of incremental disks. */
  scratchDir: string;
}

/**
 * A shut-off domain: QEMU does not run, so libvirt can neither take a checkpoint nor export the
 * disks (`cannot create checkpoint for inactive domain`). The images are at rest.
 *
 * A disk whose previous checkpoint is still valid, and whose image holds that checkpoint's bitmap
 * as QEMU saved it when it stopped, is read incrementally: qemu-nbd serves the image read-only with
 * the bitmap (it has recorded every write since the previous point up to the shutdown, and nothing
 * writes a shut-off domain's image behind libvirt). Every other disk is offered as its image and
 * read in full by hot-add. Either way the point keeps counting from that checkpoint where it is
 * valid: its bitmap records again when the domain starts, so the next run of the running domain is
 * incremental too (reading the writes since that older checkpoint, a superset).
 */
export class OfflineRead implements VmSnapshot {
  disks: SourceDisk[] = [];
  notes: string[] = [];
  definition?: VmDefinition;
  private readonly files: SessionFiles;
  private readonly exports: ImageExport[] = [];

  constructor(private readonly input: OfflineReadInput) {
    this.files = sessionFiles(input.scratchDir, input.session.job, input.info.uuid, input.session.sessionId);
  }

  async start(): Promise<void> {
    const { domain, info, session } = this.input;
    const checkpoints = await this.cleanLeftovers();
    const how: string[] = [];
    for (const d of this.input.disks) {
      if (!d.path || (d.source.type !== 'file' && d.source.type !== 'block')) {
        throw new FerryError(
          'SOURCE_DISK_NOT_FOUND',
          `disk ${d.dev} of domain ${info.name} is a ${d.source.type} disk: a shut-off domain is read from its image files or block devices, and this one has none`,
          { ...domain.virsh.context({ domain: info.name }), disk: d.dev },
        );
      }
      const chainBreak = whyFull({ job: session.job, domain: info, disk: d, previous: session.previous, checkpoints });
      const checkpoint = chainBreak ? undefined : session.previous!.disks.find((p) => p.name === d.dev)!.changeTracking!.id;
      const atRest = `domain ${info.name} is ${this.input.state}: its image ${d.path} is read in full at rest`;
      if (!checkpoint) {
        this.disks.push({ name: d.dev, size: d.size, path: d.path, format: d.format ?? 'raw', fullReason: `${atRest}; ${chainBreak}` });
        how.push(`${d.dev} in full from its image`);
        continue;
      }
      const served = await this.serveWithBitmap(d.dev, d.path, checkpoint);
      if ('exp' in served) {
        this.disks.push({
          name: d.dev,
          size: d.size,
          format: 'raw',
          nbd: { address: served.exp.address, exportName: served.exp.exportName, bitmap: checkpoint },
          changes: { since: session.previous!.id },
          changeTracking: tracking(checkpoint, info.uuid),
        });
        how.push(`${d.dev} incrementally from bitmap ${checkpoint} saved in its image (qemu-nbd)`);
      } else {
        this.disks.push({ name: d.dev, size: d.size, path: d.path, format: d.format ?? 'raw', fullReason: `${atRest}; ${served.reason}` });
        how.push(`${d.dev} in full from its image`);
      }
    }
    this.definition = await domain.definition();
    this.notes.push(`domain ${info.name} is ${this.input.state}: no checkpoint taken (libvirt takes none of an inactive domain); read ${how.join(', ')}`);
  }

  /** The image served with the checkpoint's bitmap, or why it cannot be. */
  private async serveWithBitmap(dev: string, image: string, checkpoint: string): Promise<{ exp: ImageExport } | { reason: string }> {
    const found = await imageBitmaps(image);
    if ('reason' in found) return { reason: `its bitmaps cannot be listed (${found.reason})` };
    const bm = found.bitmaps.find((b) => b.name === checkpoint);
    if (!bm) return { reason: `the image holds no bitmap ${checkpoint} (QEMU stopped without saving it)` };
    if (bm.inUse) return { reason: `bitmap ${checkpoint} in the image is marked in use: QEMU stopped without saving it, so it may miss writes` };
    if (!bm.recording) return { reason: `bitmap ${checkpoint} in the image is disabled, so it did not record every write` };
    try {
      const exp = await exportImage({ image, bitmap: checkpoint, socket: this.files.imageSocket(dev), exportName: dev });
      this.exports.push(exp);
      return { exp };
    } catch (err) {
      return { reason: `the image could not be served with its bitmap: ${err instanceof Error ? err.message : String(err)}` };
    }
  }

  /** This job's checkpoints that no committed point counts from are deleted; the rest returned. */
  private async cleanLeftovers(): Promise<Map<string, CheckpointInfo>> {
    const { domain, info, session } = this.input;
    const keep = previousCheckpoints(session.previous, session.job, info.uuid);
    const out = new Map<string, CheckpointInfo>();
    const deleted: string[] = [];
    for (const name of (await domain.checkpointNames()).sort().reverse()) {
      if (!isJobTrackingName(session.job, name)) continue;
      if (keep.has(name)) out.set(name, await domain.checkpoint(name));
      else {
        // libvirt may refuse for an inactive domain; the next run of the running domain retries
        const gone = await domain.deleteCheckpoint(name).catch((err: unknown) => {
          this.notes.push(`checkpoint ${name}, which no restore point counts from, stays until the domain runs: ${err instanceof Error ? err.message : String(err)}`);
          return false;
        });
        if (gone) deleted.push(name);
      }
    }
    if (deleted.length) this.notes.push(`leftovers of an earlier session of job ${session.job} on domain ${info.name}: deleted checkpoints ${deleted.join(', ')}`);
    return out;
  }

  async release(): Promise<void> {
    await Promise.all(this.exports.splice(0).map((e) => e.stop()));
  }
}
