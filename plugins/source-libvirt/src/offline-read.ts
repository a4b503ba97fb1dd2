import { FerryError, isJobTrackingName, type SessionInfo, type SourceDisk, type VmDefinition, type VmSnapshot } from '@ferry/core/plugin';
import { previousCheckpoints, tracking, whyFull } from './chain.js';
import type { Domain } from './domain.js';
import type { CheckpointInfo, DomainDisk, DomainInfo } from './libvirt-xml.js';
import type { PlannedDisk } from './live-backup.js';

export interface OfflineReadInput {
  domain: Domain;
  info: DomainInfo;
  disks: (PlannedDisk & { source: DomainDisk })[];
  session: SessionInfo;
  state: string;
}

/**
 * A shut-off domain: QEMU does not run, so libvirt can neither take a checkpoint nor export the
 * disks (`cannot create checkpoint for inactive domain`). Its images are at rest and read as they
 * are, directly by the proxy (hot-add), in full. When the previous point's checkpoint is still
 * valid for a disk, the restore point keeps counting from it: its bitmap, saved in the qcow2 when
 * the domain stopped, goes on recording when the domain starts again, so the next run of a running
 * domain is incremental again (it reads the writes since that older checkpoint: a superset).
 */
export class OfflineRead implements VmSnapshot {
  disks: SourceDisk[] = [];
  notes: string[] = [];
  definition?: VmDefinition;

  constructor(private readonly input: OfflineReadInput) {}

  async start(): Promise<void> {
    const { domain, info, session } = this.input;
    const checkpoints = await this.cleanLeftovers();
    for (const d of this.input.disks) {
      if (!d.path || (d.source.type !== 'file' && d.source.type !== 'block')) {
        throw new FerryError(
          'SOURCE_DISK_NOT_FOUND',
          `disk ${d.dev} of domain ${info.name} is a ${d.source.type} disk: a shut-off domain is read from its image files or block devices, and this one has none`,
          { ...domain.virsh.context({ domain: info.name }), disk: d.dev },
        );
      }
      const chainBreak = whyFull({ job: session.job, domain: info, disk: d, previous: session.previous, checkpoints });
      const keep = chainBreak ? undefined : session.previous!.disks.find((p) => p.name === d.dev)!.changeTracking!.id;
      this.disks.push({
        name: d.dev,
        size: d.size,
        path: d.path,
        format: d.format ?? 'raw',
        fullReason: `domain ${info.name} is ${this.input.state}: its image ${d.path} is read in full at rest${keep ? ` (checkpoint ${keep} stays and counts on)` : ''}`,
        ...(keep && { changeTracking: tracking(keep, info.uuid) }),
      });
    }
    this.definition = await domain.definition();
    this.notes.push(`domain ${info.name} is ${this.input.state}: disks read from their images, no checkpoint taken (libvirt takes none of an inactive domain)`);
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
      else if (await domain.deleteCheckpoint(name)) deleted.push(name);
    }
    if (deleted.length) this.notes.push(`leftovers of an interrupted session of job ${session.job} on domain ${info.name}: deleted checkpoints ${deleted.join(', ')}`);
    return out;
  }

  async release(): Promise<void> {
    // Nothing was created.
  }
}
