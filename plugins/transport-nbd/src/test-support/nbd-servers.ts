import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/**
 * Real NBD servers for specs (qemu-nbd, nbdkit, qemu-storage-daemon), started on a unix socket or
 * loopback TCP, each in a process group of its own, and stopped by the spec in every exit path (and
 * when the test process exits). Only specs import this folder.
 */

export function tempDir(prefix = 'ferry-nbd-'): { dir: string; remove(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Runs a command to completion; throws with its stderr when it fails. */
export function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 20_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.error?.message}`);
  return r.stdout;
}

export interface RunningServer {
  /** `unix:/path` or `tcp:127.0.0.1:port`. */
  address: string;
  /** The server's pid, also its process group id. */
  pid: number;
  stderr(): string;
  stop(): Promise<void>;
}

export type Listen = { socket: string } | { port: number };

/** Process groups of servers still running: killed when the test process exits. */
const groups = new Set<number>();
let exitHook = false;

/**
 * Starts a server process in a process group of its own and resolves once it accepts connections
 * (at most `readyMs`), or rejects with its stderr when it exits first. The group is killed if the
 * wait fails.
 */
export async function startServer(cmd: string, args: string[], listen: Listen, readyMs = 8000): Promise<RunningServer> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  child.on('error', (err) => (stderr += String(err)));
  if (child.pid) groups.add(child.pid);
  if (!exitHook) {
    exitHook = true;
    process.once('exit', () => groups.forEach((pgid) => killGroup(pgid, 'SIGKILL')));
  }
  const address = 'socket' in listen ? `unix:${listen.socket}` : `tcp:127.0.0.1:${listen.port}`;
  const server: RunningServer = { address, pid: child.pid ?? -1, stderr: () => stderr, stop: () => stopChild(child) };
  try {
    await waitReady(child, listen, readyMs, () => stderr);
  } catch (err) {
    await server.stop();
    throw err;
  }
  return server;
}

async function waitReady(child: ChildProcess, listen: Listen, readyMs: number, stderr: () => string): Promise<void> {
  const deadline = Date.now() + readyMs;
  for (let attempt = 0; attempt < 1000 && Date.now() < deadline; attempt++) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited early (${child.exitCode ?? child.signalCode}): ${stderr()}`);
    if (await canConnect(listen)) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`server did not listen within ${readyMs} ms: ${stderr()}`);
}

function canConnect(listen: Listen): Promise<boolean> {
  return new Promise((resolve) => {
    const s = 'socket' in listen ? net.connect({ path: listen.socket }) : net.connect({ host: '127.0.0.1', port: listen.port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Stops the server's process group: SIGTERM, SIGKILL after 3 s, and SIGKILL for anything left. */
async function stopChild(child: ChildProcess): Promise<void> {
  const pgid = child.pid;
  if (pgid === undefined) return;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    killGroup(pgid, 'SIGTERM');
    const timer = setTimeout(() => killGroup(pgid, 'SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
  killGroup(pgid, 'SIGKILL'); // children the server left behind
  groups.delete(pgid);
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // the group is gone
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((resolve, reject) => srv.listen(0, '127.0.0.1', resolve).once('error', reject));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** qemu-nbd serving `file` on a unix socket, `shared` clients at once (default 8), until stopped. */
export function startQemuNbd(socket: string, file: string, opts: { format?: string; readOnly?: boolean; bitmap?: string; shared?: number; extra?: string[] } = {}): Promise<RunningServer> {
  const args = ['--persistent', `--shared=${opts.shared ?? 8}`, '-f', opts.format ?? 'raw', '-k', socket];
  if (opts.readOnly) args.push('--read-only');
  if (opts.bitmap) args.push('-B', opts.bitmap);
  return startServer('qemu-nbd', [...args, ...(opts.extra ?? []), file], { socket });
}

/** nbdkit in the foreground on a unix socket; `args` are the plugin (and filters) with their parameters. */
export function startNbdkit(socket: string, args: string[], flags: string[] = []): Promise<RunningServer> {
  return startServer('nbdkit', ['--foreground', '--exit-with-parent', '--unix', socket, ...flags, ...args], { socket });
}
