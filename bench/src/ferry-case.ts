import { spawn } from 'node:child_process';
import { promises as fs, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FERRY = path.join(ROOT, 'bin', 'ferry.js');

export interface CaseInput {
  work: string;
  image: string;
  repo: string;
  level: string;
  scenario: 'full backup' | 'second run, 1% changed' | 'restore';
}

export interface CaseResult {
  level: string;
  scenario: string;
  wallMs: number;
  cpuMs: number;
  peakRssMiB: number;
  diskMiBPerSec: number;
  repoMiB: number;
}

/**
 * Runs one scenario as a separate `ferry` process (so CPU time and peak RSS are the process's own,
 * read from /proc when it exits via GNU time's equivalent: `/usr/bin/time` is not assumed).
 */
export async function runCase(c: CaseInput): Promise<CaseResult> {
  const job = path.join(c.work, `job-${c.level}.yaml`);
  writeFileSync(
    job,
    [
      'job: bench',
      'source: { host: file, datastore: ./images, vms: [ { name: vm, disks: [vm.raw] } ] }',
      'transport: hotadd',
      `repository: { type: filesystem, path: ${c.repo} }`,
      `storage: { blockSize: 1MiB, compression: ${c.level} }`,
    ].join('\n'),
  );
  const args =
    c.scenario === 'restore'
      ? ['restore', job, '--vm', 'vm', '--disk', 'vm.raw', '--to', path.join(c.work, 'restored.raw'), '--json']
      : ['backup', job, '--json'];
  const t0 = performance.now();
  const usage = await runMeasured(args);
  const wallMs = performance.now() - t0;
  if (c.scenario === 'restore') await fs.rm(path.join(c.work, 'restored.raw'), { force: true });
  const size = (await fs.stat(c.image)).size;
  return {
    level: c.level,
    scenario: c.scenario,
    wallMs,
    cpuMs: usage.cpuMs,
    peakRssMiB: usage.maxRssKiB / 1024,
    diskMiBPerSec: size / 1024 / 1024 / (wallMs / 1000),
    repoMiB: (await duBytes(c.repo)) / 1024 / 1024,
  };
}

/** Runs ferry in a child and returns its CPU time and peak RSS (from the child's resource usage). */
function runMeasured(args: string[]): Promise<{ cpuMs: number; maxRssKiB: number }> {
  // A tiny wrapper process reports its child's rusage: Node exposes only its own, so the wrapper
  // runs ferry in-process and prints process.resourceUsage() at exit.
  const wrapper = `process.on('exit', () => { const u = process.resourceUsage(); process.stderr.write('\\nRUSAGE ' + JSON.stringify({ cpuMs: (u.userCPUTime + u.systemCPUTime) / 1000, maxRssKiB: u.maxRSS }) + '\\n'); }); await import(${JSON.stringify(FERRY)});`;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--input-type=module', '-e', wrapper, 'ferry', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => {
      const m = /RUSAGE (\{.*\})/.exec(err);
      if (code !== 0 || !m) reject(new Error(`ferry ${args[0]} failed (${code}): ${err}\n${out}`));
      else resolve(JSON.parse(m[1]) as { cpuMs: number; maxRssKiB: number });
    });
  });
}

async function duBytes(dir: string): Promise<number> {
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else total += (await fs.stat(p)).blocks * 512;
    }
  };
  await walk(dir);
  return total;
}
