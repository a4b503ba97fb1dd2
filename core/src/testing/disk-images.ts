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

/** A sparse file of `size` bytes holding a fresh NTFS volume (`mkntfs` from ntfs-3g; 4 KiB clusters unless given). */
export async function mkntfsImage(file: string, size: number, options: { clusterSize?: number; label?: string } = {}): Promise<void> {
  await writeFile(file, '');
  await truncate(file, size);
  const args = ['-F', '-q', '-f', '-c', String(options.clusterSize ?? 4096)];
  if (options.label) args.push('-L', options.label);
  run('mkntfs', [...args, file]);
}

/** Copies a host file into an NTFS image (`ntfscp`); `dest` is a path inside the volume whose directory exists. */
export function ntfscp(image: string, source: string, dest: string): void {
  run('ntfscp', ['-f', image, source, dest]);
}

/** Free bytes of an NTFS image as `ntfscluster -i` counts them. */
export function ntfsFreeBytes(image: string): number {
  const m = /bytes of free space\s*:\s*(\d+)/.exec(run('ntfscluster', ['-i', image]));
  if (!m) throw new Error(`ntfscluster -i ${image}: no free space figure`);
  return Number(m[1]);
}
