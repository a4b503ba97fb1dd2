import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError, isJobTrackingName, trackingName, type SessionInfo, type SourceDisk, type VmDefinition, type VmSnapshot } from '@ferry/core/plugin';
import { BITMAP_FORMATS, previousCheckpoints, sessionFiles, tracking, whyFull, type SessionFiles } from './chain.js';
import type { Domain } from './domain.js';
import { backupXml, checkpointXml, type BackupJob, type CheckpointInfo, type DomainInfo } from './libvirt-xml.js';
import { firstLines } from './virsh.js';

/** One disk of the domain the job backs up, as found at the snapshot. */
export interface PlannedDisk {
  dev: string;
  size: number;
  format?: string;
  path?: string;
}

export interface LiveBackupInput {
  domain: Domain;
  info: DomainInfo;
  disks: PlannedDisk[];
  session: SessionInfo;
  /** Folder for the NBD socket and the scratch images (QEMU writes there). */
  scratchDir: string;
  /** NBD over TCP (for proxies on other machines, remote hosts) instead of the unix socket. */
  tcp?: { host: string; port: number; tls: boolean };
}

interface DiskChoice {
  disk: PlannedDisk;
  /** The checkpoint an incremental read counts from. */
  incremental?: string;
  fullReason?: string;
}

/**
 * A running (or paused) domain's snapshot: a pull-mode libvirt backup job. One `backup-begin`
 * creates this session's checkpoint (a bitmap per qcow2 disk, recording from now on) and exports
 * the point-in-time view of every disk over NBD on a unix socket, with the changes since the
 * previous point's checkpoint as a `qemu:dirty-bitmap` for incremental disks. QEMU keeps the view
 * by copy-before-write into a scratch image per disk.
 */
export class LiveBackup implements VmSnapshot {
  disks: SourceDisk[] = [];
  notes: string[] = [];
  definition?: VmDefinition;
  private readonly files: SessionFiles;
  private readonly checkpoint: string;
  private created = false;
  private released = false;
  private taken = false;
  /** Full or incremental per disk, chosen by `prepare` (and `take`, when libvirt refuses an incremental). */
  private choices?: DiskChoice[];

  constructor(private readonly input: LiveBackupInput) {
    this.files = sessionFiles(input.scratchDir, input.session.job, input.info.uuid, input.session.sessionId);
    this.checkpoint = trackingName(input.session.job, input.session.sessionId);
  }

  private get name(): string {
    return this.input.info.name;
  }

  /** The whole snapshot: `prepare`, `take`, `open`. */
  async start(): Promise<void> {
    await this.prepare();
    await this.take();
    await this.open();
  }

  /** Before the guest's freeze: leftovers cleaned, the chain checked, full or incremental chosen per disk. */
  async prepare(): Promise<void> {
    const { session } = this.input;
    const cleaned = await this.cleanLeftovers();
    const checkpoints = await this.jobCheckpoints();
    this.choices = this.input.disks.map((disk): DiskChoice => {
      const reason =
        whyFull({ job: session.job, domain: this.input.info, disk, previous: session.previous, checkpoints }) ??
        (cleaned.length ? `an earlier session's leftovers were cleaned (${cleaned.join('; ')}): a full read starts the chain afresh` : undefined);
      if (reason) return { disk, fullReason: reason };
      return { disk, incremental: session.previous!.disks.find((d) => d.name === disk.dev)!.changeTracking!.id };
    });
  }

  /** The point in time (inside the guest's freeze): `backup-begin` with this session's checkpoint. */
  async take(): Promise<void> {
    const { domain } = this.input;
    if (!this.choices) throw new FerryError('INTERNAL', `backup of domain ${this.name} taken before it was prepared`, domain.virsh.context({ domain: this.name }));
    let choices = this.choices;
    let r = await this.begin(choices);
    if (!r.ok && choices.some((c) => c.incremental)) {
      // A checkpoint libvirt knows but whose bitmap QEMU cannot use (not saved when QEMU stopped,
      // image replaced): read everything and start the chain again.
      const why = `libvirt refused the incremental backup (${firstLines(r.stderr)}), so the disk is read in full`;
      await this.dropCheckpoint();
      choices = choices.map((c) => (c.incremental ? { disk: c.disk, fullReason: why } : c));
      r = await this.begin(choices);
    }
    if (!r.ok) {
      await this.dropCheckpoint();
      await this.removeFiles();
      throw new FerryError('SOURCE_COMMAND_FAILED', `virsh backup-begin ${this.name} failed: ${firstLines(r.stderr)}`, domain.virsh.context({ domain: this.name }));
    }
    this.created = this.tracked(choices).size > 0;
    this.choices = choices;
    this.taken = true;
  }

  /** After the thaw: the backup job checked to be this session's, its exports described. */
  async open(): Promise<void> {
    const { domain, session } = this.input;
    const choices = this.choices;
    if (!choices || !this.taken) throw new FerryError('INTERNAL', `backup of domain ${this.name} opened before it was taken`, domain.virsh.context({ domain: this.name }));
    const job = await domain.backupJob();
    if (!job || !this.isOurs(job)) {
      throw new FerryError('SOURCE_COMMAND_FAILED', `the backup job of domain ${this.name} did not start as asked (its export is at ${job ? exportOf(job) : 'nowhere'})`, domain.virsh.context({ domain: this.name }));
    }
    this.disks = choices.map((c) => {
      const exp = job.disks.find((d) => d.dev === c.disk.dev);
      const d: SourceDisk = {
        name: c.disk.dev,
        size: c.disk.size,
        format: 'raw',
        nbd: {
          address: this.address,
          exportName: exp?.exportName ?? c.disk.dev,
          ...(c.incremental && { bitmap: exp?.exportBitmap ?? `backup-${c.disk.dev}` }),
          ...(this.input.tcp?.tls && { tls: true }),
        },
      };
      if (this.tracked(choices).has(c.disk.dev)) d.changeTracking = tracking(this.checkpoint, this.input.info.uuid);
      if (c.incremental) d.changes = { since: session.previous!.id };
      else d.fullReason = c.fullReason;
      return d;
    });
    this.definition = await domain.definition();
    this.notes.push(`domain ${this.name} is running: libvirt pull-mode backup${this.created ? ` with checkpoint ${this.checkpoint}` : ''}, NBD on ${this.address}${this.input.tcp?.tls ? ' (TLS)' : ''}`);
  }

  /** Where the proxy reads the export. */
  private get address(): string {
    const tcp = this.input.tcp;
    return tcp ? `tcp:${tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host}:${tcp.port}` : `unix:${this.files.socket}`;
  }

  /** This session's backup job: its scratch images are this session's. */
  private isOurs(job: BackupJob): boolean {
    const own = new Set(this.input.disks.map((d) => this.files.scratch(d.dev)));
    return job.disks.length > 0 && job.disks.every((d) => d.scratch !== undefined && own.has(d.scratch));
  }

  /** Disks that get a bitmap in this session's checkpoint. */
  private tracked(choices: DiskChoice[]): Set<string> {
    return new Set(choices.filter((c) => BITMAP_FORMATS.has(c.disk.format ?? '')).map((c) => c.disk.dev));
  }

  private async begin(choices: DiskChoice[]): Promise<{ ok: boolean; stderr: string }> {
    const { domain, info } = this.input;
    const planned = new Map(choices.map((c) => [c.disk.dev, c]));
    const backup = backupXml(
      this.input.tcp ?? { socket: this.files.socket },
      info.disks.map((d) => {
        const c = planned.get(d.dev);
        return c ? { dev: d.dev, scratch: this.files.scratch(d.dev), ...(c.incremental && { incremental: c.incremental }) } : { dev: d.dev };
      }),
    );
    const bitmaps = this.tracked(choices);
    const xml = bitmaps.size
      ? [backup, checkpointXml(this.checkpoint, `Ferry job ${this.input.session.job}, session ${this.input.session.sessionId}`, info.disks.map((d) => d.dev), bitmaps)]
      : [backup];
    return domain.virsh.runWithXml(xml, (files) => ['backup-begin', domain.ref, ...files], { domain: this.name });
  }

  /**
   * This job's checkpoints on the domain (other jobs' are none of its business; libvirt keeps
   * every checkpoint's bitmap recording, so deleting or keeping them never changes another's).
   */
  private async jobCheckpoints(): Promise<Map<string, CheckpointInfo>> {
    const { domain, session } = this.input;
    const out = new Map<string, CheckpointInfo>();
    for (const name of await domain.checkpointNames()) {
      if (isJobTrackingName(session.job, name)) out.set(name, await domain.checkpoint(name));
    }
    return out;
  }

  /**
   * What an interrupted session of this job left on this domain: its backup job (still exporting),
   * checkpoints no committed point counts from, socket and scratch files. Each is removed and
   * named in the result. Another tool's backup job is never touched: libvirt runs one backup job
   * per domain, so the session cannot start.
   */
  private async cleanLeftovers(): Promise<string[]> {
    const { domain, session, info } = this.input;
    const done: string[] = [];
    const job = await domain.backupJob();
    if (job) {
      // one of this job's sessions: its scratch images carry the job's and domain's prefix
      const jobs = job.disks.length > 0 && job.disks.every((d) => d.scratch !== undefined && path.basename(d.scratch).startsWith(this.files.prefix));
      if (!jobs) {
        throw new FerryError(
          'SOURCE_COMMAND_FAILED',
          `domain ${this.name} runs another backup job (export ${exportOf(job)}), and libvirt runs one backup job per domain: wait for it or end it with virsh domjobabort`,
          domain.virsh.context({ domain: this.name }),
        );
      }
      if (await domain.abortJob()) done.push(`aborted the backup job left running (export ${exportOf(job)})`);
    }
    const keep = previousCheckpoints(session.previous, session.job, info.uuid);
    const names = (await domain.checkpointNames()).filter((n) => isJobTrackingName(session.job, n) && !keep.has(n));
    for (const name of names.sort().reverse()) {
      const gone = await domain.deleteCheckpoint(name);
      if (gone) done.push(`deleted checkpoint ${name}, which no restore point counts from${gone === 'metadata' ? ' (its bitmap was lost with QEMU: metadata only)' : ''}`);
    }
    const left = await this.removeFiles(true);
    if (left.length) done.push(`removed ${left.join(', ')}`);
    if (done.length) this.notes.push(`leftovers of an earlier session of job ${session.job} on domain ${this.name}: ${done.join('; ')}`);
    return done;
  }

  /** Removes this session's files, or (`anySession`) every file of this job on this domain. */
  private async removeFiles(anySession = false): Promise<string[]> {
    const dir = this.input.scratchDir;
    const own = new Set([this.files.socket, ...this.input.info.disks.map((d) => this.files.scratch(d.dev))].map((f) => path.basename(f)));
    const names = (await fs.readdir(dir).catch(() => [] as string[])).filter((n) => (anySession ? n.startsWith(this.files.prefix) : own.has(n)));
    for (const n of names) await fs.rm(path.join(dir, n), { force: true });
    return names;
  }

  private async dropCheckpoint(): Promise<void> {
    if ((await this.input.domain.checkpointNames()).includes(this.checkpoint)) await this.input.domain.deleteCheckpoint(this.checkpoint);
  }

  /** The export must still be there after the reads: a domain that stopped meanwhile ended it. */
  async check(): Promise<void> {
    const job = await this.input.domain.backupJob();
    if (!job || !this.isOurs(job)) {
      throw new FerryError('SOURCE_COMMAND_FAILED', `the backup job of domain ${this.name} ended before the session finished (was the domain stopped?)`, {
        ...this.input.domain.virsh.context({ domain: this.name }),
      });
    }
  }

  /**
   * Ends the backup job, then: after a committed point only this session's checkpoint is kept
   * (older ones of the job are deleted; libvirt merges their bitmaps into their parents); after a
   * failure this session's checkpoint goes and the previous one stays, still recording.
   */
  async release(outcome: 'success' | 'failed'): Promise<void> {
    if (this.released) return;
    this.released = true;
    const { domain, session } = this.input;
    const failures: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      await fn().catch((err: unknown) => failures.push(`${what}: ${err instanceof Error ? err.message : String(err)}`));
    };
    await step('ending the backup job', async () => {
      const job = await domain.backupJob();
      if (job && this.isOurs(job)) await domain.abortJob();
    });
    if (outcome === 'success' && this.created) {
      await step('deleting older checkpoints', async () => {
        const old = (await domain.checkpointNames()).filter((n) => isJobTrackingName(session.job, n) && n !== this.checkpoint);
        for (const n of old.sort().reverse()) await domain.deleteCheckpoint(n);
      });
    } else if (outcome === 'failed') {
      await step(`deleting checkpoint ${this.checkpoint}`, () => this.dropCheckpoint());
    }
    await step('removing the socket and scratch files', () => this.removeFiles());
    if (failures.length) {
      throw new FerryError('SOURCE_COMMAND_FAILED', `releasing the backup of domain ${this.name} failed: ${failures.join('; ')}`, domain.virsh.context({ domain: this.name }));
    }
  }
}

function exportOf(job: BackupJob): string {
  return job.socket ?? job.tcp ?? 'unknown';
}
