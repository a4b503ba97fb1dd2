import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, ROOT } from './helpers.js';

/**
 * When to send SIGKILL: `afterMs` after the process started (`spawn`: it may not hold its lock yet),
 * `afterMs` after it took its repository lock (`lock`: from then on it works on the repository), or
 * `never` (it runs to its end).
 */
export type KillMoment = { at: 'spawn' | 'lock'; afterMs: number } | { at: 'never' };

export interface KillRun {
  outcome: 'killed' | 'finished';
  /** Exit code when it finished. */
  code: number | null;
  /** From the start to the moment a new lock object appeared; undefined when none was seen. */
  lockAfterMs?: number;
  /** From that moment to the end (exit or kill). */
  heldMs?: number;
  /** Whole run, start to end. */
  totalMs: number;
  stdout: string;
  stderr: string;
}

/** Safety net: a run that hangs is killed after this long, whatever the moment said. */
const HANG_MS = 180_000;

/** Lock files in `locks` (`<repo>/locks`) and, for a format 2 repository, `<repo>/mutable/locks`. */
function lockFiles(locks: string): string[] {
  const v2 = path.join(path.dirname(locks), 'mutable', path.basename(locks));
  const out: string[] = [];
  for (const dir of [locks, v2]) {
    try {
      if (existsSync(dir)) out.push(...readdirSync(dir));
    } catch {
      // the folder changed under us; the next poll sees it
    }
  }
  return out;
}

/**
 * Runs `ferry ARGS` (the real CLI in a child process) and kills it with SIGKILL at `moment`, unless it
 * ended first. The lock is seen by polling `locks` (the repository's lock folder) for a file that was
 * not there at the start, every 5 ms, so `lockAfterMs` is late by up to that much.
 */
export async function runAndKill(args: string[], locks: string, moment: KillMoment, opts: { cwd?: string } = {}): Promise<KillRun> {
  const before = new Set(lockFiles(locks));
  const t0 = performance.now();
  const child = spawn(process.execPath, [FERRY_BIN, ...args], { cwd: opts.cwd ?? ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  let ended = false;
  const exited = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', () => {
      ended = true;
      resolve();
    });
  });
  const kill = (): void => {
    if (!ended) child.kill('SIGKILL');
  };
  const timers = [setTimeout(kill, HANG_MS)];
  if (moment.at === 'spawn') timers.push(setTimeout(kill, moment.afterMs));
  let lockedAt: number | undefined;
  while (!ended && lockedAt === undefined) {
    if (lockFiles(locks).some((f) => !before.has(f))) {
      lockedAt = performance.now();
      if (moment.at === 'lock') timers.push(setTimeout(kill, moment.afterMs));
    } else await new Promise((r) => setTimeout(r, 5));
  }
  await exited;
  for (const t of timers) clearTimeout(t);
  const end = performance.now();
  return {
    outcome: child.signalCode === 'SIGKILL' ? 'killed' : 'finished',
    code: child.exitCode,
    lockAfterMs: lockedAt === undefined ? undefined : lockedAt - t0,
    heldMs: lockedAt === undefined ? undefined : end - lockedAt,
    totalMs: end - t0,
    stdout,
    stderr,
  };
}
