import { spawnSync } from 'node:child_process';
import { open, truncate, writeFile } from 'node:fs/promises';

/**
 * Real disk images for tests, made by the real tools (`sfdisk` from Debian's fdisk package). Callers
 * check the tools first with `skipUnlessTools`.
 */

/** A sparse file of `size` bytes partitioned by `sfdisk` with `script` (sfdisk's input format). */
export async function sfdiskImage(file: string, size: number, script: string): Promise<void> {
  await writeFile(file, '');
  await truncate(file, size);
  runTool('sfdisk', ['-q', '--no-reread', '--no-tell-kernel', file], script);
}

/** Runs a tool to completion; throws with its stderr when it fails. */
export function runTool(tool: string, args: string[], input?: string): string {
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
  runTool('mkntfs', [...args, file]);
}

/** Copies a host file into an NTFS image (`ntfscp`); `dest` is a path inside the volume whose directory exists. */
export function ntfscp(image: string, source: string, dest: string): void {
  runTool('ntfscp', ['-f', image, source, dest]);
}

/** Free bytes of an NTFS image as `ntfscluster -i` counts them. */
export function ntfsFreeBytes(image: string): number {
  const m = /bytes of free space\s*:\s*(\d+)/.exec(runTool('ntfscluster', ['-i', image]));
  if (!m) throw new Error(`ntfscluster -i ${image}: no free space figure`);
  return Number(m[1]);
}

/**
 * Copies the bytes of `source` into `disk` at `offset` (a partition's start), skipping all-zero
 * 64 KiB chunks so sparse images stay sparse.
 */
export async function writeImageAt(disk: string, offset: number, source: string): Promise<void> {
  const [src, dst] = [await open(source, 'r'), await open(disk, 'r+')];
  try {
    const buf = Buffer.alloc(64 * 1024);
    for (let at = 0; ; at += buf.length) {
      const { bytesRead } = await src.read(buf, 0, buf.length, at);
      if (bytesRead === 0) break;
      const chunk = buf.subarray(0, bytesRead);
      if (chunk.some((b) => b !== 0)) await dst.write(chunk, 0, bytesRead, offset + at);
    }
  } finally {
    await src.close();
    await dst.close();
  }
}

/** A Linux swap area of `size` bytes made by `mkswap` (util-linux) in `file`; extra `args` such as `['-L', label]`. */
export async function mkswapImage(file: string, size: number, args: string[] = []): Promise<void> {
  await writeFile(file, '');
  await truncate(file, size);
  runTool('mkswap', [...args, file]);
}
