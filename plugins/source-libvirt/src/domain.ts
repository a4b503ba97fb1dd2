import { FerryError, type VmDefinition } from '@ferry/core/plugin';
import { DOMAIN_XML_FORMAT } from './domain-definition.js';
import { parseBackupJob, parseCheckpoint, parseDomain, type BackupJob, type CheckpointInfo, type DomainInfo } from './libvirt-xml.js';
import { keyValue, lines, type Virsh } from './virsh.js';

/**
 * One domain as virsh reaches it, by the name or UUID the job gives. Every answer is read fresh:
 * a domain can be restarted, redefined or get a disk between two calls.
 */
export class Domain {
  constructor(
    readonly virsh: Virsh,
    /** The job's name for it: a domain name or UUID. */
    readonly ref: string,
  ) {}

  private call(): { domain: string } {
    return { domain: this.ref };
  }

  /** The live definition (the running one when it runs). SOURCE_VM_NOT_FOUND for an unknown domain. */
  async info(): Promise<DomainInfo> {
    const r = await this.virsh.tryRun(['dumpxml', this.ref], this.call());
    if (!r.ok) {
      const lower = r.stderr.toLowerCase();
      if (lower.includes('domain not found') || lower.includes('failed to get domain')) {
        throw new FerryError('SOURCE_VM_NOT_FOUND', `libvirt at ${this.virsh.uri} has no domain named ${this.ref}`, this.virsh.context(this.call()));
      }
      throw new FerryError('SOURCE_COMMAND_FAILED', `${this.virsh.describe(['dumpxml', this.ref], this.call())} failed: ${r.stderr.trim()}`, this.virsh.context(this.call()));
    }
    return this.parse('dumpxml', () => parseDomain(r.stdout));
  }

  /**
   * The definition for restore points: `--migratable` is the domain as it runs (hot-added disks
   * included) without runtime-only details, fit to be defined elsewhere; no secrets (passwords of
   * graphics consoles are left out without `--security-info`).
   */
  async definition(): Promise<VmDefinition> {
    return { format: DOMAIN_XML_FORMAT, text: await this.virsh.run(['dumpxml', '--migratable', this.ref], this.call()) };
  }

  /** `running`, `paused`, `shut off`, ... as virsh words it. */
  async state(): Promise<string> {
    return (await this.virsh.run(['domstate', this.ref], this.call())).trim().split('\n')[0].trim();
  }

  async diskSize(dev: string): Promise<number> {
    const out = await this.virsh.run(['domblkinfo', this.ref, dev], this.call());
    const size = Number(keyValue(out, 'Capacity'));
    if (!Number.isSafeInteger(size) || size <= 0) {
      throw new FerryError('SOURCE_COMMAND_FAILED', `virsh domblkinfo ${this.ref} ${dev} gave no capacity: ${out.trim().slice(0, 200)}`, this.virsh.context(this.call()));
    }
    return size;
  }

  async checkpointNames(): Promise<string[]> {
    return lines(await this.virsh.run(['checkpoint-list', this.ref, '--name'], this.call()));
  }

  async checkpoint(name: string): Promise<CheckpointInfo> {
    const xml = await this.virsh.run(['checkpoint-dumpxml', '--no-domain', this.ref, name], this.call());
    return this.parse(`checkpoint-dumpxml ${name}`, () => parseCheckpoint(xml));
  }

  /**
   * Deletes a checkpoint; libvirt merges its bitmap into its parent's. A checkpoint whose bitmap is
   * gone from the images (QEMU killed before it saved it) can only lose its metadata. Resolves
   * `metadata` in that case, false when the checkpoint was gone already.
   */
  async deleteCheckpoint(name: string): Promise<boolean | 'metadata'> {
    const r = await this.virsh.tryRun(['checkpoint-delete', this.ref, name], this.call());
    if (r.ok) return true;
    if (!(await this.checkpointNames()).includes(name)) return false;
    if (r.stderr.includes(`bitmap '${name}' not found`)) {
      await this.virsh.run(['checkpoint-delete', this.ref, name, '--metadata'], this.call());
      return 'metadata';
    }
    throw new FerryError('SOURCE_COMMAND_FAILED', `virsh checkpoint-delete ${this.ref} ${name} failed: ${r.stderr.trim()}`, this.virsh.context(this.call()));
  }

  /** The domain's running backup job, or undefined when there is none. */
  async backupJob(): Promise<BackupJob | undefined> {
    const r = await this.virsh.tryRun(['backup-dumpxml', this.ref], this.call());
    if (!r.ok) {
      if (r.stderr.toLowerCase().includes('no domain backup job')) return undefined;
      throw new FerryError('SOURCE_COMMAND_FAILED', `virsh backup-dumpxml ${this.ref} failed: ${r.stderr.trim()}`, this.virsh.context(this.call()));
    }
    return this.parse('backup-dumpxml', () => parseBackupJob(r.stdout));
  }

  /** Ends the domain's job (a pull-mode backup ends only this way). False when no job was running. */
  async abortJob(): Promise<boolean> {
    const r = await this.virsh.tryRun(['domjobabort', this.ref], this.call());
    if (r.ok) return true;
    if (!(await this.backupJob())) return false;
    throw new FerryError('SOURCE_COMMAND_FAILED', `virsh domjobabort ${this.ref} failed: ${r.stderr.trim()}`, this.virsh.context(this.call()));
  }

  private parse<T>(what: string, fn: () => T): T {
    try {
      return fn();
    } catch (err) {
      throw new FerryError('SOURCE_COMMAND_FAILED', `virsh ${what} of domain ${this.ref}: ${err instanceof Error ? err.message : String(err)}`, this.virsh.context(this.call()));
    }
  }
}
