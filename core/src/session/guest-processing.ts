import { readFileSync } from 'node:fs';
import type { GuestAgentChannel, GuestCredentials, GuestOptions, GuestRuntime, GuestSession, GuestStepResult } from '../contracts/guest-runtime.js';
import type { SourceDisk } from '../contracts/source-host.js';
import { FerryError, isFerryError, pluginError, type ErrorLocation } from '../errors.js';
import type { GuestSpec } from '../job/guest-spec.js';
import type { GuestReport, GuestStep, ReportedError } from '../report/session-report.js';
import { interrupted } from './session-common.js';

/** What the session needs to run one VM's guest steps. */
export interface GuestContext {
  vm: string;
  spec: GuestSpec;
  /** The runtime registered for `spec.os` (built on first use). */
  runtime: () => Promise<GuestRuntime>;
  /** The source host's idea of the VM's agent (`SourceHost.guestAgent`: a socket or a channel), for a spec without `agent`. */
  hostAgent?: () => Promise<string | GuestAgentChannel | undefined>;
  /** The plugin package providing it, for stamping its errors. */
  plugin: string;
  where: (p: (string | number)[]) => ErrorLocation;
  reportedError: (err: unknown) => ReportedError;
  signal?: AbortSignal;
}

/**
 * One VM's guest processing inside the session loop (`backup-session.ts`): runs each step of the
 * guest runtime bounded by `timeoutSeconds` (and the session's abort signal, except for the clean-up
 * steps `thaw`, `postThaw` and `remove`), records it in the VM report, and keeps the contract's
 * invariants: `thaw` after every `freeze` (and once on a failed VM that never froze), `postThaw`
 * after every `preFreeze`, `close` after every `connect`, each at most once, whatever failed before.
 */
export class GuestProcessing {
  readonly report: GuestReport;
  private session?: GuestSession;
  /** A step before the snapshot failed under `onGuestFailure: continue`: the rest of them are skipped. */
  private degraded = false;
  private frozeAt?: number;
  private thawPending = false;
  private thawCalled = false;
  private postThawPending = false;

  constructor(private readonly c: GuestContext) {
    this.report = { os: c.spec.os, via: c.spec.via, consistency: 'application', steps: [], freezeWindowMs: null, applications: [], warnings: [] };
  }

  /** `connect`: reaches the guest and deploys the runtime. */
  async deploy(): Promise<void> {
    await this.step('deploy', true, async (signal) => {
      const runtime = await this.c.runtime();
      const session = await runtime.connect(this.c.vm, await this.options(), signal);
      if (signal.aborted) {
        // connected after the step was given up: nothing may stay behind in the guest
        await session.close().catch(() => undefined);
        throw signal.reason;
      }
      this.session = session;
      this.report.runtime = session.label;
      return { detail: `runtime deployed (${session.label})` };
    });
  }

  async preFreeze(): Promise<void> {
    const s = this.active();
    if (!s?.preFreeze) return;
    this.postThawPending = true;
    await this.step('preFreeze', true, (signal) => s.preFreeze!(signal));
  }

  /** Freezes the guest's file systems (unless `freeze: none`); `thaw` must follow on every path. */
  async freeze(): Promise<void> {
    const s = this.active();
    if (!s || this.c.spec.freeze === 'none') return;
    this.frozeAt = Date.now();
    this.thawPending = true;
    await this.step('freeze', true, (signal) => s.freeze(signal));
  }

  /** Times the source host's snapshot while the guest is frozen (the report's `snapshot` step). */
  async snapshot<T>(take: () => Promise<T>): Promise<T> {
    const started = Date.now();
    try {
      const out = await take();
      this.record('snapshot', 'success', started);
      return out;
    } catch (err) {
      this.record('snapshot', 'failed', started, { error: this.c.reportedError(err) });
      throw err;
    }
  }

  /** A step that does not apply (`snapshot` of disks at rest), shown in the report as skipped. */
  skip(step: GuestStep, detail: string): void {
    this.report.steps.push({ step, status: 'skipped', durationMs: 0, detail });
  }

  /** Thaws when `freeze` was called, never throws. */
  async thaw(): Promise<void> {
    if (!this.thawPending || !this.session) return;
    this.thawPending = false;
    this.thawCalled = true;
    const s = this.session;
    await this.step('thaw', false, (signal) => s.thaw(signal));
    if (this.frozeAt !== undefined) this.report.freezeWindowMs = Date.now() - this.frozeAt;
  }

  /** Releases quiescing when `preFreeze` was called, after the thaw; never throws. */
  async postThaw(): Promise<void> {
    await this.thaw();
    if (!this.postThawPending || !this.session) return;
    this.postThawPending = false;
    const s = this.session;
    if (s.postThaw) await this.step('postThaw', false, (signal) => s.postThaw!(signal));
  }

  /**
   * The guest's swap/pagefile ranges on each disk (`GuestSession.skipExtents`), put on the disks as
   * `skipExtents`; one `skipExtents` step for all disks, its failure a warning (the disks are then
   * read whole).
   */
  async skipExtents(disks: SourceDisk[]): Promise<SourceDisk[]> {
    // also after a failed step under `continue`: a crash-consistent point need not hold swap either
    const s = this.session;
    if (!s?.skipExtents) return disks;
    let out = disks;
    await this.step('skipExtents', false, async () => {
      const found = await Promise.all(
        disks.map(async (d) => {
          const got = await s.skipExtents!({ name: d.name, ...(d.size !== undefined && { size: d.size }) });
          return { d, ...(Array.isArray(got) ? { extents: got, warnings: [] } : { extents: got.extents, warnings: got.warnings ?? [] }) };
        }),
      );
      out = found.map(({ d, extents }) => (extents.length ? { ...d, skipExtents: [...(d.skipExtents ?? []), ...extents] } : d));
      const said = found.filter((f) => f.extents.length).map((f) => `${f.d.name}: ${f.extents.length} range(s), ${f.extents.reduce((n, e) => n + e.length, 0)} bytes`);
      return {
        detail: said.length ? `swap/pagefile ${said.join('; ')}` : 'no swap or pagefile on these disks',
        warnings: [...new Set(found.flatMap((f) => f.warnings))],
      };
    });
    return out;
  }

  /** After the VM's point was committed; failures are warnings. */
  async afterBackup(): Promise<void> {
    const s = this.session;
    if (!s?.afterBackup) return;
    await this.step('postBackup', false, (signal) => s.afterBackup!(signal));
  }

  /** Every path's end: thaw and post-thaw if still due, then the runtime removed. Never throws. */
  async close(committed: boolean): Promise<void> {
    // A VM that failed before its freeze is thawed all the same: whatever went wrong (a step given up
    // while it ran, a runtime that froze more than it said), the guest is left thawed.
    if (!committed && !this.thawCalled && this.session && this.c.spec.freeze !== 'none') this.thawPending = true;
    await this.postThaw();
    if (!committed && this.session?.afterBackup) {
      this.report.steps.push({ step: 'postBackup', status: 'skipped', durationMs: 0, detail: 'the VM got no restore point: post-backup actions run only after success' });
    }
    const s = this.session;
    if (!s) return;
    this.session = undefined;
    await this.step('remove', false, async () => {
      await s.close();
      return { detail: 'runtime removed' };
    });
  }

  private active(): GuestSession | undefined {
    return this.degraded ? undefined : this.session;
  }

  /**
   * Runs one step bounded by `timeoutSeconds` (and, for `critical` steps, the session's signal).
   * A critical step's failure throws under `onGuestFailure: fail`; anything else becomes a warning.
   */
  private async step(step: GuestStep, critical: boolean, run: (signal: AbortSignal) => Promise<GuestStepResult>): Promise<void> {
    const started = Date.now();
    const ms = this.c.spec.timeoutSeconds * 1000;
    const limit = new AbortController();
    const signals = critical && this.c.signal ? [limit.signal, this.c.signal] : [limit.signal];
    const signal = AbortSignal.any(signals);
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const stopped = new Promise<never>((_resolve, reject) => {
      timer = setTimeout(() => {
        const err = new FerryError('GUEST_TIMEOUT', `guest step ${step} took longer than ${this.c.spec.timeoutSeconds} s (guest.timeoutSeconds) and was stopped`, this.at());
        limit.abort(err);
        reject(err);
      }, ms);
      if (critical && this.c.signal) {
        onAbort = (): void => reject(interrupted({ vm: this.c.vm }));
        if (this.c.signal.aborted) onAbort();
        else this.c.signal.addEventListener('abort', onAbort, { once: true });
      }
    });
    stopped.catch(() => undefined);
    try {
      const result = await Promise.race([run(signal), stopped]);
      this.record(step, 'success', started, result);
    } catch (raw) {
      const kept = isFerryError(raw, 'SESSION_INTERRUPTED') || isFerryError(raw, 'GUEST_TIMEOUT') || isFerryError(raw, 'JOB_INVALID');
      const err: FerryError = kept ? (raw as FerryError).at({ vm: this.c.vm }) : pluginError(raw, this.c.plugin, step, this.at());
      if (!limit.signal.aborted) limit.abort(err);
      this.record(step, 'failed', started, { error: this.c.reportedError(err) });
      if (err.code === 'SESSION_INTERRUPTED') throw err;
      if (critical) {
        this.report.consistency = 'crash';
        if (this.c.spec.onGuestFailure === 'fail') throw err;
        this.degraded = true;
        this.report.warnings.push(`guest step ${step} failed (${err.message}); onGuestFailure: continue, so the restore point is crash-consistent`);
      } else {
        this.report.warnings.push(`guest step ${step} failed: ${err.message}`);
      }
    } finally {
      clearTimeout(timer);
      if (onAbort) this.c.signal?.removeEventListener('abort', onAbort);
    }
  }

  private record(step: GuestStep, status: 'success' | 'failed', started: number, r: GuestStepResult & { error?: ReportedError } = {}): void {
    this.report.steps.push({
      step,
      status,
      durationMs: Date.now() - started,
      ...(r.detail && { detail: r.detail }),
      ...(r.scripts?.length && { scripts: r.scripts }),
      ...(r.error && { error: r.error }),
    });
    for (const a of r.applications ?? []) this.report.applications.push({ ...a, step });
    this.report.warnings.push(...(r.warnings ?? []));
    if (r.crashConsistent) this.report.consistency = 'crash';
    if (step === 'freeze' && status === 'success' && (r as { frozen?: number }).frozen === 0) {
      this.report.warnings.push('freeze froze no file system');
    }
  }

  private at(): ErrorLocation {
    return { ...this.c.where(this.c.spec.at), vm: this.c.vm };
  }

  /** The job's `guest:` key with the credentials read from the files and variable it names. */
  private async options(): Promise<GuestOptions> {
    const g = this.c.spec;
    const needsAgent = g.via === 'qga' || g.freeze === 'agent';
    const agent = g.agent ?? (needsAgent ? await this.c.hostAgent?.() : undefined);
    if (needsAgent && !agent) {
      throw new FerryError('JOB_INVALID', `missing key "agent": the source host knows no QEMU guest agent socket or channel of vm ${this.c.vm}; name it (agent: unix:/path/to/qga.sock)`, {
        ...this.c.where([...g.at, 'agent']),
        vm: this.c.vm,
      });
    }
    const credentials: GuestCredentials = {};
    if (g.key) credentials.privateKey = readFileSync(g.key);
    if (g.knownHosts) credentials.knownHosts = readFileSync(g.knownHosts, 'utf8');
    if (g.passwordEnv) {
      const password = process.env[g.passwordEnv];
      if (!password) {
        throw new FerryError('JOB_INVALID', `the environment variable ${g.passwordEnv} (guest.passwordEnv) is not set or empty`, {
          ...this.c.where([...g.at, 'passwordEnv']),
          vm: this.c.vm,
        });
      }
      credentials.password = password;
    }
    return {
      os: g.os,
      via: g.via,
      ...(agent && { agent }),
      ...(g.host !== undefined && { host: g.host, port: g.port, user: g.user }),
      credentials,
      freeze: g.freeze,
      ...(g.mounts && { mounts: g.mounts }),
      scripts: g.scripts,
      applications: g.applications,
      ...(g.vssMode && { vssMode: g.vssMode }),
      timeoutSeconds: g.timeoutSeconds,
    };
  }
}
