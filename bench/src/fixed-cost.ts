/**
 * The fixed cost of a `ferry` run (issue 18): `ferry --version` and a full backup of a 1 MiB image,
 * each as a whole process, beside `node -e 0` (Node's own start-up, the floor), run in turn
 * (A B C A B C ...) so that drift in the machine's speed touches all three alike; medians of wall
 * and CPU (user + system, threads included). Needs no benchmark image: `FERRY_BENCH_ONLY=fixed`
 * runs it alone in seconds. FERRY_BENCH_FIXED_RUNS sets the count (15). FERRY_BENCH_FIXED_BASELINE
 * names another checkout's `bin/ferry.js` (built): its two commands join the same rotation, for
 * before/after figures from one run.
 */
import { spawn } from 'node:child_process';
import { promises as fs, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { hasGnuTime } from './measure.js';
import { printTable } from './report.js';
import { writeJob } from './ferry-case.js';
import { randomBytes } from './vm-image.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FERRY = path.join(ROOT, 'bin', 'ferry.js');

/** The issue's targets, wall seconds. */
export const FIXED_TARGETS = { version: 0.15, tinyBackup: 0.35 } as const;

export interface FixedCostFigure {
  name: string;
  runs: number;
  wallMs: { min: number; median: number; max: number };
  cpuMs: { min: number; median: number; max: number };
  /** Median wall time / `node -e 0`'s. */
  vsNode?: number;
  targetS?: number;
  met?: boolean;
}

export interface FixedCostResult {
  runs: number;
  figures: FixedCostFigure[];
}

interface Usage {
  wallMs: number;
  /** User + system CPU of the process and its threads (GNU time, 10 ms resolution); NaN without it. */
  cpuMs: number;
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * One run, timed lightly: `measure` polls /proc every 50 ms for peak memory, which on a process of
 * 0.1 s costs as much as what is measured. Here GNU time (`-f '%U %S'`) gives the CPU and the
 * parent's clock the wall time.
 */
async function run(cmd: string, args: string[]): Promise<Usage> {
  const timeFile = path.join(os.tmpdir(), `ferry-bench-fixed-${process.pid}-${Date.now()}.txt`);
  const argv = hasGnuTime ? ['/usr/bin/time', '-f', '%U %S', '-o', timeFile, cmd, ...args] : [cmd, ...args];
  const t0 = performance.now();
  const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', resolve);
  });
  const wallMs = performance.now() - t0;
  let cpuMs = NaN;
  if (hasGnuTime) {
    const [u, s] = (await fs.readFile(timeFile, 'utf8').catch(() => '')).trim().split(/\s+/).slice(-2).map(Number);
    await fs.rm(timeFile, { force: true });
    cpuMs = (u + s) * 1000;
  }
  return { wallMs, cpuMs, code, stdout, stderr };
}

function spread(xs: number[]): { min: number; median: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { min: s[0], median, max: s[s.length - 1] };
}

export async function fixedCostCase(work: string, runs: number, log: (line: string) => void): Promise<FixedCostResult> {
  const ds = path.join(work, 'fixed-ds');
  const repo = path.join(work, 'fixed-repo');
  mkdirSync(ds, { recursive: true });
  await fs.writeFile(path.join(ds, 'tiny.raw'), randomBytes(1, 1, 1024 * 1024));
  const job = writeJob(work, { name: 'bench-fixed', source: { kind: 'file', datastore: ds, disk: 'tiny.raw' }, repo, level: 'optimal' });
  const ferryCases = (bin: string, label: string): { name: string; run: () => Promise<Usage>; targetS?: number }[] => [
    {
      name: `ferry --version${label}`,
      targetS: FIXED_TARGETS.version,
      run: async () => {
        const r = await run(process.execPath, [bin, '--version']);
        if (!/^\d+\.\d+\.\d+/.test(r.stdout)) throw new Error(`${bin} --version printed ${JSON.stringify(r.stdout)}`);
        return r;
      },
    },
    {
      name: `full backup, 1 MiB image${label}`,
      targetS: FIXED_TARGETS.tinyBackup,
      run: async () => {
        await fs.rm(repo, { recursive: true, force: true }); // a full backup each time: a new repository
        const r = await run(process.execPath, [bin, 'backup', job, '--json']);
        if (r.code !== 0 || (JSON.parse(r.stdout) as { status: string }).status !== 'success') {
          throw new Error(`${bin} backup ${job} failed (${r.code}): ${r.stdout.slice(0, 2000)}${r.stderr.slice(-2000)}`);
        }
        return r;
      },
    },
  ];
  const baseline = process.env.FERRY_BENCH_FIXED_BASELINE;
  const cases = [
    { name: 'node -e 0 (peer)', run: () => run(process.execPath, ['-e', '0']) } as { name: string; run: () => Promise<Usage>; targetS?: number },
    ...ferryCases(FERRY, ''),
    ...(baseline ? ferryCases(path.resolve(baseline), ' (baseline)') : []),
  ];
  const samples = cases.map(() => [] as Usage[]);
  for (const c of cases) await c.run(); // one warm-up each (page cache, first-run effects)
  for (let i = 0; i < runs; i++) for (const [j, c] of cases.entries()) samples[j].push(await c.run());
  await fs.rm(repo, { recursive: true, force: true });
  const figures: FixedCostFigure[] = cases.map((c, j) => ({
    name: c.name,
    runs,
    wallMs: spread(samples[j].map((u) => u.wallMs)),
    cpuMs: spread(samples[j].map((u) => u.cpuMs)),
    ...(c.targetS !== undefined && { targetS: c.targetS }),
  }));
  const node = figures[0].wallMs.median;
  for (const f of figures.slice(1)) {
    f.vsNode = f.wallMs.median / node;
    if (f.targetS !== undefined) f.met = f.wallMs.median / 1000 <= f.targetS;
  }
  log(`fixed cost: ${figures.map((f) => `${f.name} ${(f.wallMs.median / 1000).toFixed(3)} s`).join(', ')}`);
  return { runs, figures };
}

export function fixedCostTable(r: FixedCostResult): string {
  const s = (ms: number): string => (ms / 1000).toFixed(3);
  return printTable(
    ['command', 'wall s (median)', 'wall min-max', 'CPU s (median)', 'x node -e 0', 'target', 'met'],
    r.figures.map((f) => [
      f.name,
      s(f.wallMs.median),
      `${s(f.wallMs.min)}-${s(f.wallMs.max)}`,
      s(f.cpuMs.median),
      f.vsNode === undefined ? '1.00' : f.vsNode.toFixed(2),
      f.targetS === undefined ? '' : `<= ${f.targetS} s`,
      f.met === undefined ? '' : f.met ? 'yes' : 'NO',
    ]),
  );
}
