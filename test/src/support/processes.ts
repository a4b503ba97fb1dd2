import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';

/** True when `tool` is on the PATH; a spec that needs one calls `skipUnlessTools` (fails in CI). */
export { hasTool } from '@ferry/core/testing';

export interface Daemon {
  child: ChildProcess;
  stderr(): string;
  stop(): Promise<void>;
}

/**
 * Starts a server process and waits (bounded) until the unix socket it listens on exists; kills it
 * and rejects with its stderr when it exits first or the wait runs out.
 */
export async function startDaemon(cmd: string, args: string[], socket: string, readyMs = 10_000): Promise<Daemon> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  };
  const deadline = Date.now() + readyMs;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`${cmd} did not start listening on ${socket}: ${stderr || `exit ${child.exitCode}`}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, stderr: () => stderr, stop };
}
