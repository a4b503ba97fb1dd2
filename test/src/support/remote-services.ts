import { spawn, type ChildProcess } from 'node:child_process';
import { FERRY_BIN, ROOT } from './helpers.js';

/** A `ferry proxy serve` or `ferry repository serve` child process on loopback. */
export interface ServiceProcess {
  child: ChildProcess;
  /** `host:port` it printed in its `listening on` line. */
  address: string;
  stderr(): string;
  /** Everything it printed on stdout so far. */
  stdout(): string;
  /** SIGTERM, then SIGKILL after 5 s; resolves when the process is gone. */
  stop(): Promise<void>;
  /** SIGKILL at once (a crash). */
  kill(): Promise<void>;
}

/**
 * Starts `ferry <args>` (a serve verb listening on 127.0.0.1:0) and waits, at most `readyMs`, for
 * its `listening on HOST:PORT` line. `env` adds to the environment (e.g. FERRY_PLUGIN_PATH).
 */
export async function startService(args: string[], readyMs = 20_000, env: Record<string, string> = {}): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [FERRY_BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const end = async (sig: NodeJS.Signals): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(sig);
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(timer);
  };
  const address = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      void end('SIGKILL');
      reject(new Error(`ferry ${args.join(' ')} did not print "listening on" within ${readyMs} ms: ${stderr}`));
    }, readyMs);
    child.stdout!.on('data', (d: Buffer) => {
      stdout += d.toString();
      // `listening on ADDRESS`, or the `listening` event of a serve verb's --json lines.
      const m = /listening on (\S+)/.exec(stdout) ?? /"event":"listening","address":"([^"]+)"/.exec(stdout);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`ferry ${args.join(' ')} exited with ${code} before listening: ${stderr}`));
    });
  });
  return { child, address, stderr: () => stderr, stdout: () => stdout, stop: () => end('SIGTERM'), kill: () => end('SIGKILL') };
}

/** A job that backs up through a repository service and proxies. */
export function remoteJob(opts: { server: string; proxies: string[]; certs: string; disks: string[]; vm?: string; extra?: string }): string {
  return [
    'job: remote-job',
    'source:',
    '  host: file',
    '  datastore: ./images',
    '  vms:',
    `    - name: ${opts.vm ?? 'web01'}`,
    `      disks: [${opts.disks.join(', ')}]`,
    'transport: auto',
    'repository:',
    `  server: ${JSON.stringify(opts.server)}`,
    'proxies:',
    ...opts.proxies.map((p) => `  - address: ${JSON.stringify(p)}`),
    `certs: ${opts.certs}`,
    'storage:',
    '  blockSize: 256KiB',
    opts.extra ?? '',
  ].join('\n');
}
