import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { measure, type Usage } from './measure.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FERRY = path.join(ROOT, 'bin', 'ferry.js');

/** The parts of `ferry backup --json` (the session report) the benchmark reads. */
export interface SessionJson {
  status: string;
  durationMs: number;
  totals: { sizeBytes: number; bytesRead: number; zeroBytesSkipped: number; bytesTransferred: number; bytesWritten: number };
  stages: { stage: string; busyMs: number; busyShare: number }[];
  bottleneck: string | null;
  disks: { transport: string; mode: string; modeReason: string; bytesRead: number; blocks: Record<string, number>; durationMs: number }[];
}

/** The parts of `ferry restore --json` the benchmark reads. */
export interface RestoreJson {
  sizeBytes: number;
  bytesWritten: number;
  zeroBytes: number;
  sparse: boolean;
  durationMs: number;
}

/** Where a job's VM comes from. */
export type JobSource =
  | { kind: 'file'; datastore: string; disk: string }
  | { kind: 'qemu'; qmp: string; nbd: string; disk: string }
  | { kind: 'nbd'; pluginDir: string; address: string; connections?: number };

export interface JobSpec {
  name: string;
  source: JobSource;
  repo: string;
  level: string;
  blockSize?: string;
}

/** Writes a job file into `dir` and returns its path. */
export function writeJob(dir: string, spec: JobSpec): string {
  const s = spec.source;
  const lines = [`job: ${spec.name}`];
  if (s.kind === 'nbd') lines.push(`plugins: [${JSON.stringify(s.pluginDir)}]`);
  lines.push('source:');
  if (s.kind === 'file') {
    lines.push('  host: file', `  datastore: ${JSON.stringify(s.datastore)}`, `  vms: [ { name: vm, disks: [${s.disk}] } ]`, 'transport: hotadd');
  } else if (s.kind === 'qemu') {
    lines.push('  host: qemu', `  vms: [ { name: vm, qmp: ${JSON.stringify(s.qmp)}, nbd: ${JSON.stringify(s.nbd)}, disks: [${s.disk}] } ]`, 'transport: nbd');
  } else {
    const conn = s.connections ? `, connections: ${s.connections}` : '';
    lines.push('  host: bench-nbd', `  vms: [ { name: vm, nbd: ${JSON.stringify(s.address)}${conn}, disks: [disk] } ]`, 'transport: nbd');
  }
  lines.push(`repository: { type: filesystem, path: ${JSON.stringify(spec.repo)} }`);
  lines.push(`storage: { blockSize: ${spec.blockSize ?? '1MiB'}, compression: ${spec.level} }`);
  const file = path.join(dir, `${spec.name}.yaml`);
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}

/** `ferry backup JOB --json` as its own process, measured; fails unless the session succeeded. */
export async function ferryBackup(job: string): Promise<{ usage: Usage; report: SessionJson }> {
  const r = await measure(process.execPath, [FERRY, 'backup', job, '--json'], { allowFailure: true });
  const report = parse<SessionJson>(r.stdout, 'backup', r.stderr);
  if (r.code !== 0 || report.status !== 'success') throw new Error(`ferry backup ${job} failed (${r.code}): ${r.stdout.slice(0, 3000)}${r.stderr.slice(-2000)}`);
  return { usage: r, report };
}

/** `ferry restore JOB --vm vm --disk DISK --to FILE --json`, measured. */
export async function ferryRestore(job: string, disk: string, to: string): Promise<{ usage: Usage; report: RestoreJson }> {
  const r = await measure(process.execPath, [FERRY, 'restore', job, '--vm', 'vm', '--disk', disk, '--to', to, '--json'], { allowFailure: true });
  if (r.code !== 0) throw new Error(`ferry restore ${job} failed (${r.code}): ${r.stdout.slice(0, 3000)}${r.stderr.slice(-2000)}`);
  return { usage: r, report: parse<RestoreJson>(r.stdout, 'restore', r.stderr) };
}

function parse<T>(stdout: string, what: string, stderr: string): T {
  try {
    return JSON.parse(stdout) as T;
  } catch {
    throw new Error(`ferry ${what} printed no JSON report: ${stdout.slice(0, 2000)}${stderr.slice(-2000)}`);
  }
}
