import { existsSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { firstDifference } from '@ferry/core/testing';
import { basicJob, runFerry, writeJob, type CliResult } from './helpers.js';

export const VM = 'web01';
export const DISK = 'vm.raw';
/** What the prune job keeps: its newest restore points. */
export const KEEP = 3;

/** One row of `ferry list --json`. */
export interface ListedPoint {
  id: string;
  vm: string;
  status: 'ok' | 'damaged';
  code?: string;
  reason?: string;
}

export type Opened = { ok: true; points: ListedPoint[] } | { ok: false; wrongPassphrase: boolean; detail: string };

/**
 * The torture's encrypted repository seen from outside, through the real CLI: one job file per
 * passphrase (`job-N.yaml`, no retention, so backups never remove points; `prune-N.yaml`, the same
 * job with `retention: { restorePoints: KEEP }`), all on `./repo` beside them.
 */
export class TortureRepo {
  constructor(readonly dir: string) {}

  get locks(): string {
    return path.join(this.dir, 'repo', 'locks');
  }

  /** True when a lock object (or a lock being written) is in the repository. */
  hasLocks(): boolean {
    return existsSync(this.locks) && readdirSync(this.locks).length > 0;
  }

  passFile(n: number): string {
    return path.join(this.dir, `pass-${n}`);
  }

  /** Writes passphrase `n` and its two job files. */
  addPassphrase(n: number, seed: number): void {
    writeFileSync(this.passFile(n), `torture passphrase ${n} of seed ${seed}`);
    const encrypted = (yaml: string): string => yaml.replace('  path: ./repo\n', `  path: ./repo\n  encryption: { passphraseFile: ./pass-${n} }\n`);
    writeJob(this.dir, encrypted(basicJob({ disks: [DISK], vm: VM })), `job-${n}.yaml`);
    writeJob(this.dir, encrypted(basicJob({ disks: [DISK], vm: VM, extra: `retention: { restorePoints: ${KEEP} }` })), `prune-${n}.yaml`);
  }

  job(n: number): string {
    return path.join(this.dir, `job-${n}.yaml`);
  }

  pruneJob(n: number): string {
    return path.join(this.dir, `prune-${n}.yaml`);
  }

  /** `ferry list --json` with passphrase `n`: the points, or why it could not list them. */
  async open(n: number): Promise<Opened> {
    const r = await runFerry(['list', this.job(n), '--json']);
    const out = parse<{ restorePoints?: ListedPoint[]; error?: { code: string; message: string } }>(r);
    if (r.code === 0 && out?.restorePoints) return { ok: true, points: out.restorePoints };
    return { ok: false, wrongPassphrase: out?.error?.code === 'REPO_WRONG_PASSPHRASE', detail: out?.error ? `${out.error.code}: ${out.error.message}` : tail(r) };
  }

  /** `ferry unlock`: removes the stale locks a killed process left; returns how many. */
  async unlock(n: number): Promise<number> {
    const r = await runFerry(['unlock', this.job(n), '--json']);
    const out = parse<{ locks: { removed: boolean }[] }>(r);
    if (r.code !== 0 || !out) throw new Error(`ferry unlock failed: ${tail(r)}`);
    return out.locks.filter((l) => l.removed).length;
  }

  /** `ferry verify --json` (every block): undefined when it passes, else what it names. */
  async verify(n: number): Promise<string | undefined> {
    const r = await runFerry(['verify', this.job(n), '--json']);
    if (r.code === 0) return undefined;
    const out = parse<{
      error?: { message: string };
      affectedPoints?: { restorePoint: string }[];
      damagedObjects?: { object: string; message: string }[];
    }>(r);
    if (!out) return `exit ${r.code}: ${tail(r)}`;
    const objects = (out.damagedObjects ?? []).slice(0, 5).map((o) => `${o.object}: ${o.message}`);
    const points = (out.affectedPoints ?? []).map((p) => p.restorePoint);
    return [`exit ${r.code}`, out.error?.message, points.length ? `affected points ${points.join(', ')}` : '', ...objects].filter(Boolean).join('; ');
  }

  /** Restores `id` and compares it with `copy`: undefined when byte-identical, else why not. */
  async restoreDiffers(n: number, id: string, copy: string): Promise<string | undefined> {
    const out = path.join(this.dir, 'restored.raw');
    rmSync(out, { force: true });
    try {
      const r = await runFerry(['restore', this.job(n), '--vm', VM, '--disk', DISK, '--point', id, '--to', out]);
      if (r.code !== 0) return `restore exit ${r.code}: ${tail(r)}`;
      const at = await firstDifference(copy, out);
      return at === -1 ? undefined : `restored disk differs from its copy at byte ${at}`;
    } finally {
      rmSync(out, { force: true });
    }
  }
}

function parse<T>(r: CliResult): T | undefined {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    return undefined;
  }
}

/** The end of a failed command's output, for a one-line report. */
export function tail(r: CliResult): string {
  return (r.stderr.trim() || r.stdout.trim()).split('\n').slice(-3).join(' | ').slice(0, 400);
}
