import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { QgaConnection } from '@ferry/guest-common';
import { FerryError, type ApplicationOutcome, type Extent, type GuestOptions, type GuestSession, type GuestStepResult, type ScriptOutcome } from '@ferry/core/plugin';
import { diskExtents, extentsScript, LAYOUT_SCRIPT, parseLayout, type GuestLayout } from './extents.js';
import { commandLimit, LISTING_BYTES, psQuote, tail, type PowerShell } from './powershell.js';
import { sqlServerTruncation, SQLSERVER_WRITER, windowsApplications } from './sqlserver.js';
import { describeWriter, diskShadowErrors, parseShadowSet, parseWriters, writerFailed, type ShadowSet, type WriterStatus } from './vss.js';

/** Volumes VSS snapshots when `mounts` names none: every fixed NTFS or ReFS volume with a drive letter. */
const VOLUMES_SCRIPT =
  "@(Get-Volume | Where-Object { $_.DriveType -eq 'Fixed' -and $_.DriveLetter -and ($_.FileSystemType -eq 'NTFS' -or $_.FileSystemType -eq 'ReFS') } | ForEach-Object { [string]$_.DriveLetter + ':' }) -join ' '";

/** Where qemu-ga's VSS provider reads the backup type (QEMU qga/vss-win32: `VssOption`, a VSS_BACKUP_TYPE). */
export const QGA_VSS_KEY = 'HKLM:\\SYSTEM\\CurrentControlSet\\Services\\QEMU Guest Agent VSS Provider';
/** VSS_BACKUP_TYPE (vss.h): VSS_BT_FULL = 1, VSS_BT_COPY = 5. */
const VSS_BT = { full: 1, copy: 5 } as const;

/**
 * One session's runtime in a Windows guest: `ferry-guest.ps1` and the user scripts in `dir`
 * (`%TEMP%\ferry-<random>`), run through PowerShell over SSH. The freeze is a VSS snapshot set
 * with writers (DiskShadow, held by the runtime until `thaw` or its watchdog), or, with the guest agent
 * (`agent`), qemu-ga's `guest-fsfreeze-freeze`, whose VSS provider holds the writers frozen until
 * `guest-fsfreeze-thaw` (VSS itself lets go after 10 s).
 */
export class WindowsGuestSession implements GuestSession {
  private set?: ShadowSet;
  private held = false;
  /** The snapshot set was created with every writer healthy: the point is application-consistent. */
  private consistent = false;
  private layout?: GuestLayout;

  constructor(
    private readonly ps: PowerShell,
    private readonly o: GuestOptions,
    private readonly dir: string,
    private readonly agent?: QgaConnection,
  ) {
    windowsApplications(o.applications);
  }

  get label(): string {
    return this.ps.label;
  }

  private get mode(): 'full' | 'copy' {
    return this.o.vssMode ?? 'copy';
  }

  private get sqlServer(): { truncateLogs: boolean; instance: string } | undefined {
    const app = this.o.applications.find((a) => a.name === 'sqlserver');
    if (!app) return undefined;
    return { truncateLogs: app.options.truncateLogs !== false, instance: typeof app.options.instance === 'string' ? app.options.instance : '.' };
  }

  async preFreeze(signal?: AbortSignal): Promise<GuestStepResult> {
    const scripts = this.o.scripts.preFreeze ? [await this.runScript('preFreeze', this.o.scripts.preFreeze, signal)] : [];
    const applications: ApplicationOutcome[] = [];
    if (this.sqlServer) {
      // SQL Server quiesces through its VSS writer: it must be there and stable before the set
      const writer = (await this.writers(signal)).find((w) => w.name === SQLSERVER_WRITER);
      if (!writer) throw new FerryError('GUEST_STEP_FAILED', `sqlserver: the VSS writer ${SQLSERVER_WRITER} is not registered (is the SQL Server VSS Writer service running?)`);
      if (writerFailed(writer)) throw new FerryError('GUEST_STEP_FAILED', `sqlserver: the VSS writer is not ready: ${describeWriter(writer)}`);
      applications.push({ name: 'sqlserver', status: 'success', method: `VSS writer ${SQLSERVER_WRITER}`, detail: `${writer.stateText}; quiesced by VSS in freeze` });
    }
    return { scripts, applications, detail: [scripts.length && 'preFreeze script', applications.length && 'SqlServerWriter ready'].filter(Boolean).join('; ') || 'nothing to do' };
  }

  async freeze(signal?: AbortSignal): Promise<GuestStepResult & { frozen: number }> {
    if (this.agent) return this.agentFreeze(this.agent, signal);
    const volumes = this.o.mounts ?? (await this.ps.check('listing volumes', VOLUMES_SCRIPT, { signal })).trim().split(/\s+/).filter(Boolean);
    if (!volumes.length) throw new FerryError('GUEST_STEP_FAILED', 'the guest has no fixed NTFS or ReFS volume with a drive letter to snapshot');
    this.held = true;
    const r = await this.runtime(['freeze', String(this.o.timeoutSeconds), this.mode, ...volumes], signal);
    const set = parseShadowSet(r.output);
    if (r.exitCode !== 0 || !set) {
      const why = diskShadowErrors(r.output);
      throw new FerryError('GUEST_STEP_FAILED', `VSS snapshot set of ${volumes.join(', ')} not created (exit ${r.exitCode ?? 'none'}): ${why.length ? why.join('; ') : tail(r.output)}`);
    }
    this.set = set;
    const writers = await this.writers(signal);
    const failed = writers.filter(writerFailed);
    if (failed.length) {
      throw new FerryError('GUEST_STEP_FAILED', `VSS writer${failed.length > 1 ? 's' : ''} failed in snapshot set ${set.setId}: ${failed.map(describeWriter).join('; ')}`);
    }
    this.consistent = true;
    const applications: ApplicationOutcome[] = this.sqlServer
      ? [{ name: 'sqlserver', status: 'success', method: `VSS writer ${SQLSERVER_WRITER}`, detail: writers.find((w) => w.name === SQLSERVER_WRITER)?.stateText ?? 'not listed' }]
      : [];
    return {
      frozen: set.volumes.length,
      applications,
      detail: `VSS ${this.mode} snapshot set ${set.setId} of ${set.volumes.join(', ')} (${writers.length} writers); released after ${this.o.timeoutSeconds} s without thaw`,
    };
  }

  async thaw(signal?: AbortSignal): Promise<GuestStepResult> {
    if (!this.held) return { detail: 'nothing frozen' };
    this.held = false;
    if (this.agent) return this.agentThaw(this.agent, signal);
    const r = await this.runtime(['thaw'], signal);
    const warnings = /released the set already/.test(r.output) ? [`the guest's watchdog had released the VSS snapshot set after ${this.o.timeoutSeconds} s`] : [];
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `releasing the VSS snapshot set failed (exit ${r.exitCode ?? 'none'}): ${tail(r.output)}`);
    const ended = this.mode === 'full' ? 'end backup: writers told of a completed full backup' : 'copy: ended without BackupComplete, writers record nothing';
    return { warnings, detail: `VSS snapshot set ${this.set?.setId ?? '(none created)'} released; ${ended}` };
  }

  async postThaw(signal?: AbortSignal): Promise<GuestStepResult> {
    const scripts = this.o.scripts.postThaw ? [await this.runScript('postThaw', this.o.scripts.postThaw, signal)] : [];
    return { scripts, detail: scripts.length ? 'postThaw script' : 'nothing to do' };
  }

  /** Only after the commit: SQL Server log truncation, then the `postBackup` script. */
  async afterBackup(signal?: AbortSignal): Promise<GuestStepResult> {
    const applications: ApplicationOutcome[] = [];
    const sql = this.sqlServer;
    if (sql?.truncateLogs && this.consistent) applications.push(await sqlServerTruncation(this.ps, sql.instance, signal));
    else if (sql?.truncateLogs) {
      // a crash-consistent point: the logs may be needed to recover past it
      applications.push({ name: 'sqlserver', status: 'skipped', method: 'log truncation', detail: 'the VSS snapshot set did not succeed: the point is crash-consistent, logs kept' });
    }
    const scripts = this.o.scripts.postBackup ? [await this.runScript('postBackup', this.o.scripts.postBackup, signal)] : [];
    return { applications, scripts, detail: [applications.some((a) => a.status === 'success') && 'SQL Server logs truncated', scripts.length && 'postBackup script'].filter(Boolean).join('; ') || 'nothing to do' };
  }

  /**
   * pagefile.sys, swapfile.sys and hiberfil.sys on the partitions of the guest disk that is this VM
   * disk: the one whose serial number is the disk's name (QEMU's `serial=`), else the only guest disk
   * of the disk's size. No such disk (or two of that size): nothing is skipped (a guess could drop
   * live data).
   */
  async skipExtents(disk: { name: string; size?: number }): Promise<Extent[]> {
    this.layout ??= parseLayout(await this.ps.check('reading the partition layout', LAYOUT_SCRIPT, { maxOutput: LISTING_BYTES }));
    const bySerial = this.layout.Disks.find((d) => (d.SerialNumber ?? '').trim() === disk.name);
    const bySize = this.layout.Disks.filter((d) => disk.size !== undefined && d.Size === disk.size);
    const guestDisk = bySerial ?? (bySize.length === 1 ? bySize[0] : undefined);
    if (!guestDisk) return [];
    const script = extentsScript(this.layout, guestDisk.Number);
    if (!script) return [];
    // not `check`: a file fsutil cannot query (in use, gone) only contributes nothing
    return diskExtents((await this.ps.run(script, { maxOutput: LISTING_BYTES })).output, this.layout, guestDisk.Number).extents;
  }

  async close(): Promise<void> {
    try {
      if (this.held && this.agent) await this.agent.execute('guest-fsfreeze-thaw', undefined, 15_000).catch(() => undefined);
      else if (this.held) await this.runtime(['abort']).catch(() => undefined);
      await this.ps.run(`Remove-Item -LiteralPath ${psQuote(this.dir)} -Recurse -Force`).catch(() => undefined);
    } finally {
      await this.ps.channel.close().catch(() => undefined);
      await this.agent?.close().catch(() => undefined);
    }
  }

  /**
   * Through qemu-ga: writers checked first (a failed one would fail the set), the provider's backup
   * type set in the registry (`VssOption`, read at each freeze), then `guest-fsfreeze-freeze`
   * (`-freeze-list` of `mounts`). A refusal names the writers that failed.
   */
  private async agentFreeze(agent: QgaConnection, signal?: AbortSignal): Promise<GuestStepResult & { frozen: number }> {
    const before = (await this.writers(signal)).filter(writerFailed);
    if (before.length) throw new FerryError('GUEST_STEP_FAILED', `VSS writers failed before the freeze: ${before.map(describeWriter).join('; ')}`);
    await this.ps.check(
      "setting qemu-ga's VSS backup type",
      `Set-ItemProperty -LiteralPath ${psQuote(QGA_VSS_KEY)} -Name VssOption -Value ${VSS_BT[this.mode]} -Type DWord -ErrorAction Stop`,
      { signal },
    );
    this.held = true;
    const ms = this.o.timeoutSeconds * 1000;
    let frozen: number;
    try {
      frozen = (await (this.o.mounts
        ? agent.execute('guest-fsfreeze-freeze-list', { mountpoints: this.o.mounts }, ms)
        : agent.execute('guest-fsfreeze-freeze', undefined, ms))) as number;
    } catch (err) {
      const failed = (await this.writers().catch(() => [])).filter(writerFailed);
      const why = failed.length ? `; VSS writer${failed.length > 1 ? 's' : ''} failed: ${failed.map(describeWriter).join('; ')}` : '';
      throw new FerryError('GUEST_STEP_FAILED', `qemu-ga guest-fsfreeze-freeze (VSS ${this.mode}) failed: ${(err as Error).message}${why}`);
    }
    this.consistent = true;
    const applications: ApplicationOutcome[] = this.sqlServer ? [{ name: 'sqlserver', status: 'success', method: `VSS writer ${SQLSERVER_WRITER}`, detail: 'held frozen by qemu-ga' }] : [];
    return { frozen, applications, detail: `qemu-ga VSS ${this.mode} freeze of ${frozen} volume(s): writers held until thaw (VSS lets go of writes after 10 s)` };
  }

  /** `guest-fsfreeze-thaw`: an error means VSS let go before it (over 10 s): a crash-consistent point, said so. */
  private async agentThaw(agent: QgaConnection, signal?: AbortSignal): Promise<GuestStepResult> {
    try {
      const n = (await agent.execute('guest-fsfreeze-thaw', undefined, this.o.timeoutSeconds * 1000)) as number;
      const failed = (await this.writers(signal)).filter(writerFailed);
      if (failed.length) {
        this.consistent = false;
        return { crashConsistent: true, warnings: failed.map((w) => `VSS writer failed during the freeze: ${describeWriter(w)}`), detail: `guest-fsfreeze-thaw: ${n} volume(s)` };
      }
      return { detail: `guest-fsfreeze-thaw: ${n} volume(s); ${this.mode === 'full' ? 'BackupComplete: writers record a full backup' : 'copy: writers record nothing'}` };
    } catch (err) {
      // thawed all the same (VSS let go by itself): the step is done, the point is not what was asked
      this.consistent = false;
      return {
        crashConsistent: true,
        warnings: [`qemu-ga guest-fsfreeze-thaw: ${(err as Error).message}; the writes were not held until the snapshot: the point is only crash-consistent`],
        detail: 'guest-fsfreeze-thaw: VSS had let go of the writes already',
      };
    }
  }

  private async writers(signal?: AbortSignal): Promise<WriterStatus[]> {
    const out = await this.ps.check('vssadmin list writers', 'vssadmin list writers', { signal, maxOutput: LISTING_BYTES });
    return parseWriters(out);
  }

  /** The runtime's output is kept whole (DiskShadow's log is parsed); a user script's is its last 4 KiB. */
  private runtime(args: string[], signal?: AbortSignal): ReturnType<PowerShell['run']> {
    return this.ps.run(`& ${psQuote(`${this.dir}\\ferry-guest.ps1`)} ${args.map(psQuote).join(' ')}; exit $LASTEXITCODE`, { signal, ...(args[0] !== 'run' && { maxOutput: LISTING_BYTES }) });
  }

  /** Copies a user script into the guest and runs it bounded by the step's limit; a non-zero exit throws. */
  private async runScript(step: string, local: string, signal?: AbortSignal): Promise<ScriptOutcome> {
    const name = path.basename(local);
    const remote = `${this.dir}\\${step}-${name.replace(/[^A-Za-z0-9._-]/g, '_')}`;
    await this.ps.writeFile(remote, readFileSync(local));
    const started = Date.now();
    const limit = commandLimit(this.o);
    const r = await this.runtime(['run', String(limit), remote], signal);
    const outcome: ScriptOutcome = { script: name, exitCode: r.exitCode, output: r.output, durationMs: Date.now() - started };
    if (r.exitCode === 124 && /was stopped after/.test(r.output)) throw new FerryError('GUEST_TIMEOUT', `${step} script ${name} ran longer than ${limit} s and was stopped: ${tail(r.output)}`);
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `${step} script ${name} exited with ${r.exitCode ?? 'no code'}: ${tail(r.output)}`);
    return outcome;
  }
}
