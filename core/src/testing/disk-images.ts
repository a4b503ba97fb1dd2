import { spawnSync } from 'node:child_process';
import { truncate, writeFile } from 'node:fs/promises';

/**
 * Real disk images for tests, made by the real tools (`sfdisk` from Debian's fdisk package). Callers
 * check the tools first with `skipUnlessTools`.
 */

/** A sparse file of `size` bytes partitioned by `sfdisk` with `script` (sfdisk's input format). */
export async function sfdiskImage(file: string, size: number, script: string): Promise<void> {
  await writeFile(file, '');
  await truncate(file, size);
  run('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], script);
}

/** Runs a tool to completion; throws with its stderr when it fails. */
export function run(tool: string, args: string[], input?: string): string {
  const r = spawnSync(tool, args, { input, encoding: 'utf8', env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } });
  if (r.error) throw r.error;
  if (r.status !== 0) throw new Error(`${tool} ${args.join(' ')} exited ${r.status}: ${r.stderr}`);
  return r.stdout;
}
