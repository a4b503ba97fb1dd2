import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository's root folder (test/dist/support → ../../..). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const FERRY_BIN = path.join(ROOT, 'bin', 'ferry.js');

/** A fresh temporary folder, removed by `cleanup`. */
export function tempDir(prefix = 'ferry-test-'): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function writeJob(dir: string, yaml: string, name = 'job.yaml'): string {
  const file = path.join(dir, name);
  writeFileSync(file, yaml);
  return file;
}

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs the real `ferry` CLI in a child process. */
export function runFerry(args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [FERRY_BIN, ...args], {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

/** Parses a CLI's JSON stdout, with the whole output in the error when it is not JSON. */
export function json<T = Record<string, unknown>>(r: CliResult): T {
  try {
    return JSON.parse(r.stdout) as T;
  } catch {
    throw new Error(`not JSON (exit ${r.code}):\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  }
}

export function basicJob(opts: { datastore?: string; disks: string[]; vm?: string; repo?: string; extra?: string; blockSize?: string; compression?: string }): string {
  return [
    'job: test-job',
    'source:',
    '  host: file',
    `  datastore: ${opts.datastore ?? './images'}`,
    '  vms:',
    `    - name: ${opts.vm ?? 'web01'}`,
    `      disks: [${opts.disks.join(', ')}]`,
    'transport: auto',
    'repository:',
    '  type: filesystem',
    `  path: ${opts.repo ?? './repo'}`,
    'storage:',
    `  blockSize: ${opts.blockSize ?? '256KiB'}`,
    `  compression: ${opts.compression ?? 'optimal'}`,
    opts.extra ?? '',
  ].join('\n');
}

/** A loopback TCP port free at the moment of asking (the kernel picks it), for a server a test starts. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}
