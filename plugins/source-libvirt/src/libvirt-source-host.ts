import os from 'node:os';
import {
  FerryError,
  type DefinedVm,
  type DefineTarget,
  type GuestAgentChannel,
  type JobContext,
  type PreparedSnapshot,
  type SessionInfo,
  type SourceHost,
  type VmDefinition,
  type VmInventory,
  type VmSelection,
  type VmSnapshot,
} from '@ferry/core/plugin';
import { LibvirtAgentChannel } from './agent-channel.js';
import { DOMAIN_XML_FORMAT, redefine } from './domain-definition.js';
import { Domain } from './domain.js';
import { unusableReason, type DomainDisk, type DomainInfo } from './libvirt-xml.js';
import { LiveBackup, type PlannedDisk } from './live-backup.js';
import { OfflineRead } from './offline-read.js';
import { lines, Virsh } from './virsh.js';

/** The `source:` keys of `host: libvirt` (validated by the registered `configSchema`). */
export interface LibvirtSourceConfig {
  /** libvirt connection URI; default `qemu:///system`. */
  uri?: string;
  /** Folder for the NBD socket and scratch images of running domains' backups; default the system temp folder. */
  scratchDir?: string;
  /**
   * Export running domains' disks over TCP instead of a unix socket: QEMU listens on `host`, port
   * `port` + the VM's place in `vms:` (several VMs of a session back up at once); `tls` uses the
   * certificates of libvirt's `backup_tls_x509_cert_dir` (qemu.conf) and needs the job's
   * `transport.tls` on the reading side.
   */
  nbd?: { host: string; port: number; tls?: boolean };
}

export const DEFAULT_URI = 'qemu:///system';

/** Domain states in which QEMU does not run: the disks are images at rest. */
const AT_REST = new Set(['shut off', 'crashed']);

interface KnownDomain {
  domain: Domain;
  info: DomainInfo;
  /** Target devs the job backs up. */
  devs: string[];
  index: number;
}

/**
 * Source host for the domains of a libvirt daemon (`qemu:///system`, `qemu+ssh://...`), reached
 * through `virsh`. Running domains are snapshotted with libvirt's own backup API: a checkpoint per
 * session and a pull-mode backup job exporting NBD (`LiveBackup`). Shut-off domains are read from
 * their images (`OfflineRead`). Ferry never talks to the domain's QEMU behind libvirt's back.
 */
export class LibvirtSourceHost implements SourceHost {
  private readonly virsh: Virsh;
  private readonly known = new Map<string, KnownDomain>();
  private readonly scratchDir: string;
  private readonly nbd?: LibvirtSourceConfig['nbd'];

  constructor(
    config: LibvirtSourceConfig,
    private readonly job: JobContext,
  ) {
    this.virsh = new Virsh(config.uri ?? DEFAULT_URI, job.where(['source', 'uri']));
    this.scratchDir = config.scratchDir ?? os.tmpdir();
    this.nbd = config.nbd;
  }

  get label(): string {
    return `libvirt:${this.virsh.uri}`;
  }

  async inventory(selections: readonly VmSelection[]): Promise<VmInventory[]> {
    const out: VmInventory[] = [];
    for (const [index, sel] of selections.entries()) {
      const domain = new Domain(this.virsh, sel.name);
      const info = await domain.info().catch((err: unknown) => {
        if (err instanceof FerryError) throw new FerryError(err.code, err.detail, { ...err.where, ...this.job.where(['source', 'vms', index, 'name']) }, { cause: err });
        throw err;
      });
      const { devs, notes } = this.chooseDisks(sel, info, index);
      const disks = [];
      for (const dev of devs) {
        const d = info.disks.find((x) => x.dev === dev)!;
        disks.push({ name: dev, size: await domain.diskSize(dev), ...(d.format && { format: d.format }) });
      }
      if (info.agent) notes.push(`guest agent channel: ${info.agent.type}${info.agent.path ? ` ${info.agent.path}` : ''}`);
      this.known.set(sel.name, { domain, info, devs, index });
      out.push({ name: sel.name, disks, ...(notes.length && { notes }) });
    }
    return out;
  }

  /**
   * Every domain libvirt knows, running or not, that has a disk to back up (`vms: all`,
   * `vms: { match }`): a domain with only a cdrom would otherwise fail every run of the job.
   */
  async listVms(): Promise<string[]> {
    const out: string[] = [];
    for (const name of lines(await this.virsh.run(['list', '--all', '--name']))) {
      const info = await new Domain(this.virsh, name).info().catch(() => undefined);
      if (info?.disks.some((d) => !unusableReason(d))) out.push(name);
    }
    return out;
  }

  /**
   * The guest agent channel of a domain the inventory found (for guest processing). While the
   * domain runs, libvirtd itself holds the connection to that socket: talk to the agent through
   * `agentCommand`, not the path.
   */
  agentChannel(vm: string): DomainInfo['agent'] {
    return this.known.get(vm)?.info.agent;
  }

  /**
   * For guest processing with `via: qga` (or `freeze: agent`) and no `agent:` in the job: the
   * domain's agent through libvirt (`LibvirtAgentChannel`, `virsh qemu-agent-command`), when its
   * definition has the `org.qemu.guest_agent.0` channel. A domain without one: undefined (the job
   * must name a socket).
   */
  async guestAgent(vm: string): Promise<GuestAgentChannel | undefined> {
    const k = this.known.get(vm);
    if (!k?.info.agent) return undefined;
    return new LibvirtAgentChannel(this.virsh, k.domain.ref, vm);
  }

  /**
   * One QEMU guest agent command through libvirt (`virsh qemu-agent-command --timeout`), e.g.
   * `guest-fsfreeze-freeze`: its `return` value. The agent's own errors and a guest that does not
   * answer within `timeoutSec` are SOURCE_COMMAND_FAILED naming the command and the domain.
   */
  async agentCommand(vm: string, command: string, args?: Record<string, unknown>, timeoutSec = 30): Promise<unknown> {
    const ref = this.known.get(vm)?.domain.ref ?? vm;
    const call = { domain: vm, timeoutMs: (timeoutSec + 30) * 1000 };
    const text = JSON.stringify({ execute: command, ...(args && { arguments: args }) });
    const out = await this.virsh.run(['qemu-agent-command', '--timeout', String(timeoutSec), ref, text], call);
    try {
      return (JSON.parse(out) as { return?: unknown }).return;
    } catch {
      throw new FerryError('SOURCE_COMMAND_FAILED', `the guest agent of domain ${vm} answered ${command} with what is not JSON: ${out.slice(0, 200)}`, this.virsh.context(call));
    }
  }

  async snapshot(vm: VmInventory, session: SessionInfo): Promise<VmSnapshot> {
    const plan = await this.plan(vm, session);
    if (plan.read) {
      const read = plan.read;
      await read.start().catch(async (err: unknown) => {
        await read.release();
        throw err;
      });
      return read;
    }
    const live = plan.live!;
    // A snapshot that fails half-way is never handed to the core, which would release it: undo here.
    await live.start().catch((err: unknown) => this.undo(live, err));
    return live;
  }

  /**
   * The snapshot around the guest's freeze (guest processing): of a running domain, the leftover
   * clean-up, the checkpoint chain's checks and the choice of full or incremental per disk happen
   * before the freeze; only `backup-begin` (the checkpoint and the point-in-time view) runs in the
   * freeze window (`take`); the export is checked and described after the thaw (`open`). A domain
   * at rest has nothing to freeze: its images are opened in `take`, as `snapshot` does.
   */
  async prepareSnapshot(vm: VmInventory, session: SessionInfo): Promise<PreparedSnapshot> {
    const plan = await this.plan(vm, session);
    if (plan.read) {
      const read = plan.read;
      return { take: () => read.start(), open: () => Promise.resolve(read), abandon: () => read.release() };
    }
    const live = plan.live!;
    await live.prepare().catch((err: unknown) => this.undo(live, err));
    return {
      take: () => live.take(),
      open: async () => {
        await live.open();
        return live;
      },
      abandon: () => live.release('failed'),
    };
  }

  /** The domain's disks and state now, and the snapshot that fits them (not started). */
  private async plan(vm: VmInventory, session: SessionInfo): Promise<{ read?: OfflineRead; live?: LiveBackup }> {
    const k = this.known.get(vm.name);
    if (!k) throw new FerryError('INTERNAL', `snapshot of domain ${vm.name} before its inventory`, { vm: vm.name });
    const info = await k.domain.info();
    const disks: PlannedDisk[] = [];
    for (const dev of k.devs) {
      const d = info.disks.find((x) => x.dev === dev);
      if (!d) throw new FerryError('SOURCE_DISK_NOT_FOUND', `disk ${dev} of domain ${vm.name} disappeared after the inventory`, { ...this.virsh.context({ domain: vm.name }), disk: dev });
      disks.push({ dev, size: await k.domain.diskSize(dev), ...(d.format && { format: d.format }), ...(d.path && { path: d.path }) });
    }
    const state = await k.domain.state();
    if (AT_REST.has(state)) {
      return { read: new OfflineRead({ domain: k.domain, info, disks: disks.map((p) => ({ ...p, source: info.disks.find((x) => x.dev === p.dev)! })), session, state, scratchDir: this.scratchDir }) };
    }
    const tcp = this.nbd && { host: this.nbd.host, port: this.nbd.port + k.index, tls: this.nbd.tls === true };
    return { live: new LiveBackup({ domain: k.domain, info, disks, session, scratchDir: this.scratchDir, ...(tcp && { tcp }) }) };
  }

  /** Undoes a live backup that failed before the core got it, and rethrows its error. */
  private async undo(live: LiveBackup, err: unknown): Promise<never> {
    await live.release('failed').catch((e: unknown) => {
      if (err instanceof FerryError) throw new FerryError(err.code, `${err.detail}; undoing the backup also failed: ${e instanceof Error ? e.message : String(e)}`, err.where, { cause: err });
    });
    throw err;
  }

  async defineVm(definition: VmDefinition, target: DefineTarget): Promise<DefinedVm> {
    const call = { domain: target.name };
    if (definition.format !== DOMAIN_XML_FORMAT) {
      throw new FerryError('RESTORE_NOT_FOUND', `the restore point holds a ${definition.format} definition; libvirt defines domains from ${DOMAIN_XML_FORMAT}`, this.virsh.context(call));
    }
    const existing = await this.virsh.tryRun(['domuuid', target.name], call);
    if (existing.ok) {
      throw new FerryError('RESTORE_TARGET_EXISTS', `libvirt at ${this.virsh.uri} has a domain named ${target.name} already (UUID ${existing.stdout.trim()}); choose another name for --define`, this.virsh.context(call));
    }
    let out;
    try {
      out = redefine(definition.text, target);
    } catch (err) {
      throw new FerryError('RESTORE_NOT_FOUND', `the restore point's domain definition cannot be used: ${err instanceof Error ? err.message : String(err)}`, this.virsh.context(call));
    }
    if (target.dryRun) return { name: target.name, notes: out.notes };
    const r = await this.virsh.runWithXml([out.xml], (files) => ['define', files[0]], call);
    if (!r.ok) throw new FerryError('SOURCE_COMMAND_FAILED', `virsh define ${target.name} failed: ${r.stderr.trim()}`, this.virsh.context(call));
    const uuid = (await this.virsh.run(['domuuid', target.name], call)).trim();
    return { name: target.name, id: uuid, notes: out.notes };
  }

  /** The disks named in the job, or every disk that can be backed up; the rest with the reason. */
  private chooseDisks(sel: VmSelection, info: DomainInfo, index: number): { devs: string[]; notes: string[] } {
    const where = (at: (string | number)[]): ReturnType<JobContext['where']> => ({ ...this.virsh.context({ domain: sel.name }), ...this.job.where(at) });
    if (sel.disks) {
      const devs = sel.disks.map((dev, j) => {
        const d = info.disks.find((x) => x.dev === dev);
        if (!d) {
          throw new FerryError('SOURCE_DISK_NOT_FOUND', `domain ${sel.name} has no disk with target ${dev} (it has: ${known(info.disks)})`, {
            ...where(['source', 'vms', index, 'disks', j]),
            disk: dev,
          });
        }
        const why = unusableReason(d);
        if (why) throw new FerryError('SOURCE_DISK_NOT_FOUND', `disk ${dev} of domain ${sel.name} cannot be backed up: ${why}`, { ...where(['source', 'vms', index, 'disks', j]), disk: dev });
        return dev;
      });
      return { devs, notes: [] };
    }
    const notes: string[] = [];
    const devs: string[] = [];
    for (const d of info.disks) {
      const why = unusableReason(d);
      if (why) notes.push(`disk ${d.dev} left out: ${why}`);
      else devs.push(d.dev);
    }
    if (!devs.length) {
      throw new FerryError('SOURCE_VM_NOT_FOUND', `domain ${sel.name} has no disk that can be backed up (${notes.join('; ') || 'no disks'})`, where(['source', 'vms', index, 'name']));
    }
    return { devs, notes };
  }
}

function known(disks: DomainDisk[]): string {
  return disks.map((d) => `${d.dev} (${d.device})`).join(', ') || 'none';
}
