import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FERRY_BIN, ROOT, type CliResult } from './helpers.js';

/** The folder of test-only plugins (`cbt-sim`, `gated-read`, ...), for a job's `plugins:` key. */
export const FIXTURE_PLUGINS = path.join(ROOT, 'test', 'fixtures', 'plugins');

/**
 * A `ferry backup` that stops before the last MiB of its disk, through the test-only `gated-read`
 * transport: every other block has been read, hashed and deduplicated (the session holds its lock
 * and has loaded the index) when `waiting` resolves. `open()` lets it finish.
 */
export interface GatedBackup {
  child: ChildProcess;
  /** Resolves once the session waits at the gate (rejects after 60 s, or if the backup ends first). */
  waiting: Promise<void>;
  open(): void;
  /** The CLI result once it exits. */
  done: Promise<CliResult>;
}

export function startGatedBackup(job: string, image: string): GatedBackup {
  rmSync(`${image}.gate`, { force: true });
  rmSync(`${image}.waiting`, { force: true });
  const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
  let exited = false;
  void done.then(() => (exited = true));
  const waiting = (async (): Promise<void> => {
    const deadline = Date.now() + 60_000;
    while (!existsSync(`${image}.waiting`)) {
      if (exited) throw new Error(`the backup ended before reaching its gate:\n${stdout}\n${stderr}`);
      if (Date.now() > deadline) throw new Error('the backup did not reach its gate within 60 s');
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  return { child, waiting, done, open: () => writeFileSync(`${image}.gate`, '') };
}

/** A job for one VM whose disk is read through the gated transport. */
export function gatedJob(opts: { job: string; vm: string; disk: string; extra?: string }): string {
  return [
    `job: ${opts.job}`,
    `plugins: [${FIXTURE_PLUGINS}]`,
    `source: { host: file, datastore: ./images, vms: [ { name: ${opts.vm}, disks: [${opts.disk}] } ] }`,
    'transport: gated-read',
    'repository: { type: filesystem, path: ./repo }',
    'storage: { blockSize: 256KiB, compression: optimal }',
    opts.extra ?? '',
  ].join('\n');
}
