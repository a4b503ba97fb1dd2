import { readFileSync } from 'node:fs';
import path from 'node:path';
import { FerryError, type Extent, type ApplicationOutcome, type GuestOptions, type GuestSession, type GuestStepResult, type ScriptOutcome } from '@ferry/core/plugin';
import { quiescerFor, type Quiescer } from './applications.js';
import type { GuestChannel } from '@ferry/guest-common';
import { QgaChannel } from './qga-channel.js';
import { matchDisk, parseSwaps } from './swap-extents.js';
import { localBootId, ownMachineRefusal } from './own-machine.js';

/**
 * One session's runtime in a Linux guest: the runtime script and the user scripts in `dir` (a
 * folder only root can read), run through `channel`. Freezing is the runtime script's `fsfreeze`
 * (with its watchdog) or, with the agent, `guest-fsfreeze-freeze` with the runtime's watchdog armed
 * first.
 */
export class LinuxGuestSession implements GuestSession {
  private readonly quiesced: Quiescer[] = [];
  private frozenBy?: 'fsfreeze' | 'agent';
  private swaps?: Promise<ReturnType<typeof parseSwaps>>;

  constructor(
    private readonly channel: GuestChannel,
    private readonly agent: QgaChannel | undefined,
    private readonly o: GuestOptions,
    private readonly dir: string,
    /** The guest's boot id, to tell when the guest is this very machine (`ownMachineRefusal`). */
    private readonly bootId?: string,
  ) {}

  get label(): string {
    return this.channel.label;
  }

  /** The bound of one command in the guest: a little under the step's, so the runtime stops it itself. */
  private get limit(): number {
    return Math.max(1, this.o.timeoutSeconds - 1);
  }

  private get runtime(): string {
    return `${this.dir}/ferry-guest.sh`;
  }

  async preFreeze(signal?: AbortSignal): Promise<GuestStepResult> {
    const scripts = this.o.scripts.preFreeze ? [await this.runScript('preFreeze', this.o.scripts.preFreeze, signal)] : [];
    const applications: ApplicationOutcome[] = [];
    for (const app of this.o.applications) {
      const q = quiescerFor(app, this.channel);
      // resume is owed from here on, even if quiesce fails half-way (a lock taken, the answer lost)
      this.quiesced.push(q);
      applications.push(await q.quiesce(signal));
    }
    return { scripts, applications, detail: [scripts.length && 'preFreeze script', applications.length && `${applications.map((a) => a.name).join(', ')} quiesced`].filter(Boolean).join('; ') || 'nothing to do' };
  }

  async freeze(signal?: AbortSignal): Promise<GuestStepResult & { frozen: number }> {
    const useAgent = this.o.freeze === 'agent' || (this.o.freeze === 'auto' && this.o.via === 'qga');
    if (useAgent) {
      if (!this.agent) throw new FerryError('GUEST_STEP_FAILED', 'freeze: agent needs the guest agent socket (guest.agent)');
      await this.runtimeCommand(['arm', String(this.o.timeoutSeconds), ...(this.o.mounts ?? [])], signal);
      this.frozenBy = 'agent';
      const frozen = await this.agent.agentFreeze(this.o.mounts, this.o.timeoutSeconds * 1000);
      return { frozen, detail: `guest-fsfreeze-freeze${this.o.mounts ? `-list of ${this.o.mounts.join(', ')}` : ''}: ${frozen} file system(s); watchdog thaws after ${this.o.timeoutSeconds} s` };
    }
    const refusal = ownMachineRefusal(this.bootId, localBootId(), this.o.mounts);
    if (refusal) throw new FerryError('GUEST_STEP_FAILED', refusal);
    this.frozenBy = 'fsfreeze';
    const out = await this.runtimeCommand(['freeze', String(this.o.timeoutSeconds), ...(this.o.mounts ?? [])], signal);
    const frozen = Number(/frozen (\d+)/.exec(out)?.[1] ?? 0);
    return { frozen, detail: `fsfreeze of ${frozen} file system(s)${this.o.mounts ? ` (${this.o.mounts.join(', ')})` : ''}; watchdog thaws after ${this.o.timeoutSeconds} s` };
  }

  async thaw(): Promise<GuestStepResult> {
    if (this.frozenBy === 'agent' && this.agent) {
      const n = await this.agent.agentThaw(this.limit * 1000);
      await this.runtimeCommand(['disarm']);
      return { detail: `guest-fsfreeze-thaw: ${n} file system(s)` };
    }
    const out = await this.runtimeCommand(['thaw']);
    return { detail: `fsfreeze -u: ${/thawed (\d+)/.exec(out)?.[1] ?? 0} file system(s)` };
  }

  async postThaw(signal?: AbortSignal): Promise<GuestStepResult> {
    const applications: ApplicationOutcome[] = [];
    const problems: string[] = [];
    // in reverse: the last quiesced is resumed first
    for (const q of this.quiesced.splice(0).reverse()) {
      const r = await q.resume().catch((err: unknown) => {
        problems.push(err instanceof Error ? err.message : String(err));
        return undefined;
      });
      if (r) applications.push(r);
    }
    const scripts = this.o.scripts.postThaw ? [await this.runScript('postThaw', this.o.scripts.postThaw, signal)] : [];
    const failed = applications.filter((a) => a.status === 'failed');
    if (problems.length || failed.length) {
      throw new FerryError('GUEST_STEP_FAILED', `resuming failed: ${[...problems, ...failed.map((a) => `${a.name}: ${a.detail ?? a.method}`)].join('; ')}`);
    }
    return { applications, scripts, detail: [applications.length && 'applications resumed', scripts.length && 'postThaw script'].filter(Boolean).join('; ') || 'nothing to do' };
  }

  async afterBackup(signal?: AbortSignal): Promise<GuestStepResult> {
    if (!this.o.scripts.postBackup) return { detail: 'nothing to do' };
    const s = await this.runScript('postBackup', this.o.scripts.postBackup, signal);
    return { scripts: [s], detail: 'postBackup script' };
  }

  /**
   * Swap partitions and swap files of the guest on the VM's disk of the same size (the runtime's
   * `swaps`; read once per session). Nothing when no guest disk, or more than one, has that size.
   */
  async skipExtents(disk: { name: string; size?: number }): Promise<{ extents: Extent[]; warnings: string[] }> {
    // a fragmented swap file lists many extents: keep the whole listing (bounded at 8 MiB)
    this.swaps ??= this.runtimeCommand(['swaps'], undefined, 8 << 20).then(parseSwaps);
    const { disks, problems } = await this.swaps;
    return { extents: matchDisk(disks, disk)?.extents ?? [], warnings: problems.map((p) => `${p}: read as data`) };
  }

  async close(): Promise<void> {
    try {
      for (const q of this.quiesced.splice(0)) await q.resume().catch(() => undefined);
      await this.channel.exec(['rm', '-rf', '--', this.dir]).catch(() => undefined);
    } finally {
      await this.channel.close().catch(() => undefined);
      if (this.agent && this.agent !== this.channel) await this.agent.close().catch(() => undefined);
    }
  }

  /** Copies a user script into the guest and runs it bounded by the step's limit; a non-zero exit throws. */
  private async runScript(step: string, local: string, signal?: AbortSignal): Promise<ScriptOutcome> {
    const name = path.basename(local);
    const remote = `${this.dir}/${step}-${name.replace(/[^A-Za-z0-9._-]/g, '_')}`;
    await this.channel.writeFile(remote, readFileSync(local), 0o700);
    const started = Date.now();
    const r = await this.channel.exec(['sh', this.runtime, 'run', String(this.limit), remote], { signal });
    const outcome: ScriptOutcome = { script: name, exitCode: r.exitCode, output: r.output, durationMs: Date.now() - started };
    if (r.exitCode === 124 && /was stopped after/.test(r.output)) {
      throw new FerryError('GUEST_TIMEOUT', `${step} script ${name} ran longer than ${this.limit} s and was stopped: ${tail(r.output)}`);
    }
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `${step} script ${name} exited with ${r.exitCode ?? 'a signal'}: ${tail(r.output)}`);
    return outcome;
  }

  private async runtimeCommand(args: string[], signal?: AbortSignal, maxOutput?: number): Promise<string> {
    const r = await this.channel.exec(['sh', this.runtime, ...args], { signal, maxOutput });
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `ferry-guest.sh ${args[0]} failed (exit ${r.exitCode}): ${tail(r.output)}`);
    return r.output;
  }
}

function tail(output: string): string {
  const t = output.trim();
  return t.length > 400 ? `...${t.slice(-400)}` : t || '(no output)';
}
