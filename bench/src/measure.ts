import { spawn, spawnSync } from 'node:child_process';
import { existsSync, promises as fs, readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** What one measured command cost: its whole process tree, threads included. */
export interface Usage {
  wallMs: number;
  /** User + system CPU of the command and every child it waited for (GNU time), else polled /proc. */
  cpuMs: number;
  /**
   * Peak resident memory of the process tree: the larger of GNU time's maximum (the biggest single
   * process) and the highest sum over the tree seen by polling /proc every 50 ms.
   */
  peakRssMiB: number;
  /** How the figures were taken: `gnu-time+proc` or `proc`. */
  method: string;
}

export interface Measured extends Usage {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  env?: Record<string, string>;
  cwd?: string;
  /** Non-zero exit is returned instead of thrown. */
  allowFailure?: boolean;
}

const GNU_TIME = '/usr/bin/time';
const PAGE = 4096;

/** Whether `/usr/bin/time` is GNU time (Debian package `time`), which reports CPU and max RSS. */
export const hasGnuTime: boolean = existsSync(GNU_TIME) && spawnSync(GNU_TIME, ['-v', 'true'], { encoding: 'utf8' }).stderr.includes('Maximum resident');

/** Whether a program is on PATH. */
export function installed(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

/** Runs `cmd args` to completion and measures wall time, CPU time and peak RSS of its process tree. */
export async function measure(cmd: string, args: string[], opts: RunOptions = {}): Promise<Measured> {
  const timeFile = path.join(os.tmpdir(), `ferry-bench-time-${process.pid}-${Date.now()}.txt`);
  const argv = hasGnuTime ? [GNU_TIME, '-v', '-o', timeFile, cmd, ...args] : [cmd, ...args];
  const t0 = performance.now();
  const child = spawn(argv[0], argv.slice(1), { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => (stdout += d));
  child.stderr.on('data', (d) => (stderr += d));
  const poll = new TreePoller(child.pid!);
  const timer = setInterval(() => poll.sample(), 50);
  const code = await new Promise<number | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (c) => resolve(c));
  }).finally(() => clearInterval(timer));
  const wallMs = performance.now() - t0;
  let cpuMs = poll.cpuMs;
  let peakKiB = poll.peakKiB;
  let method = 'proc';
  if (hasGnuTime) {
    const text = await fs.readFile(timeFile, 'utf8').catch(() => '');
    await fs.rm(timeFile, { force: true });
    const num = (label: string): number => Number(new RegExp(`${label}: ([\\d.]+)`).exec(text)?.[1] ?? NaN);
    const user = num('User time \\(seconds\\)');
    const sys = num('System time \\(seconds\\)');
    if (Number.isFinite(user + sys)) cpuMs = (user + sys) * 1000;
    peakKiB = Math.max(peakKiB, num('Maximum resident set size \\(kbytes\\)') || 0);
    method = 'gnu-time+proc';
  }
  if (code !== 0 && !opts.allowFailure) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${code}\n${stderr.slice(-3000)}\n${stdout.slice(-2000)}`);
  }
  return { code, stdout, stderr, wallMs, cpuMs, peakRssMiB: peakKiB / 1024, method };
}

/** Samples RSS and CPU of a process and all its descendants from /proc. */
class TreePoller {
  peakKiB = 0;
  private readonly cpuTicks = new Map<number, number>();
  private readonly hz = 100;

  constructor(private readonly root: number) {}

  get cpuMs(): number {
    let t = 0;
    for (const v of this.cpuTicks.values()) t += v;
    return (t * 1000) / this.hz;
  }

  sample(): void {
    let rssPages = 0;
    for (const pid of this.tree()) {
      try {
        const statm = readFileSync(`/proc/${pid}/statm`, 'utf8').split(' ');
        rssPages += Number(statm[1]);
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        this.cpuTicks.set(pid, Number(f[11]) + Number(f[12]));
      } catch {
        // exited between listing and reading
      }
    }
    this.peakKiB = Math.max(this.peakKiB, (rssPages * PAGE) / 1024);
  }

  private tree(): number[] {
    const children = new Map<number, number[]>();
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
        const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
        const list = children.get(ppid) ?? [];
        list.push(Number(name));
        children.set(ppid, list);
      } catch {
        // gone
      }
    }
    const out: number[] = [];
    const walk = (pid: number): void => {
      out.push(pid);
      for (const c of children.get(pid) ?? []) walk(c);
    };
    walk(this.root);
    return out;
  }
}

/** Bytes a folder (or file) occupies on disk: allocated blocks, so holes count nothing. */
export async function diskUsage(p: string): Promise<number> {
  const st = await fs.lstat(p).catch(() => undefined);
  if (!st) return 0;
  if (!st.isDirectory()) return st.blocks * 512;
  let total = 0;
  for (const e of await fs.readdir(p)) total += await diskUsage(path.join(p, e));
  return total;
}

/** The machine's load average and CPU, for the record next to the numbers. */
export function machine(): { cpus: number; cpuModel: string; node: string; memGiB: number; loadavg: number[]; kernel: string; disk: string } {
  const root = spawnSync('sh', ['-c', "df -T \"${TMPDIR:-/tmp}\" | tail -1 | awk '{print $1\" \"$2}'"], { encoding: 'utf8' }).stdout.trim();
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    node: process.version,
    memGiB: Math.round(os.totalmem() / 1024 ** 3),
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
    kernel: os.release(),
    disk: root,
  };
}
