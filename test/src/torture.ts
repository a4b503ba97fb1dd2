/**
 * npm run torture -- --rounds N [--seed S] [--kills K] [--max-seconds T] [--keep]
 *
 * Kill -9 torture of an encrypted repository through the real CLI (`support/torture.ts` says what
 * each round does and checks). Prints one line per round and ends with exactly one line
 * `torture: N kills, N points checked, N lost`; exits 1 when anything was lost, after lines that
 * say which point and why. The work folder is a temporary one, removed at the end unless `--keep`
 * or something was lost (then its path is printed, to look at the repository).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Torture } from './support/torture.js';

function usage(message: string): never {
  process.stderr.write(`torture: ${message}\nusage: npm run torture -- --rounds N [--seed S] [--kills K] [--max-seconds T] [--keep]\n`);
  process.exit(2);
}

function count(name: string, value: string | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) usage(`--${name} ${value}: give a whole number`);
  return n;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        rounds: { type: 'string' },
        seed: { type: 'string' },
        kills: { type: 'string' },
        'max-seconds': { type: 'string' },
        keep: { type: 'boolean', default: false },
      },
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  const rounds = count('rounds', values.rounds, 20);
  const seed = count('seed', values.seed, Date.now() % 2 ** 31);
  const kills = values.kills === undefined ? undefined : count('kills', values.kills, 0);
  const maxSeconds = count('max-seconds', values['max-seconds'], 6 * 3600);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-torture-'));
  const log = (line: string): void => void process.stdout.write(`${line}\n`);
  const torture = new Torture({ dir, rounds, kills, seed, maxSeconds, log });
  let result;
  try {
    result = await torture.run();
  } catch (err) {
    // Set-up or the harness itself failed: not a finding about the repository, but no 0 lost either.
    log(`torture: stopped: ${(err as Error).stack ?? err}`);
    rmSync(dir, { recursive: true, force: true });
    return 2;
  }
  const m = torture.moments;
  log(
    `torture: seed ${seed}, ${result.rounds} rounds in ${result.seconds.toFixed(0)} s: ${m.beforeLock} killed before their lock, ` +
      `${m.afterLock} after, ${m.finished} finished; ${result.restored} restores`,
  );
  for (const line of result.lost) log(`LOST: ${line}`);
  if (values.keep || result.lost.length) log(`torture: work folder kept: ${dir}`);
  else rmSync(dir, { recursive: true, force: true });
  log(`torture: ${result.kills} kills, ${result.checked} points checked, ${result.lost.length} lost`);
  return result.lost.length ? 1 : 0;
}

process.exitCode = await main();
