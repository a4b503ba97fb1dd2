import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';

/** A persistent dirty bitmap in a qcow2 image, as `qemu-img info` lists it. */
export interface ImageBitmap {
  name: string;
  /** `in-use`: QEMU did not save it (it stopped without closing the image): not to be trusted. */
  inUse: boolean;
  /** `auto`: recording (enabled). */
  recording: boolean;
}

/**
 * The persistent bitmaps of a qcow2 image at rest (`qemu-img info --output=json -U`), or why they
 * cannot be listed. Never throws.
 */
export async function imageBitmaps(image: string, timeoutMs = 30_000): Promise<{ bitmaps: ImageBitmap[] } | { reason: string }> {
  const r = await new Promise<{ err?: Error; stdout: string; stderr: string }>((resolve) =>
    execFile('qemu-img', ['info', '--output=json', '-U', '-f', 'qcow2', image], { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 4 << 20, encoding: 'utf8' }, (err, stdout, stderr) =>
      resolve({ ...(err && { err }), stdout: String(stdout), stderr: String(stderr) }),
    ),
  );
  if (r.err) return { reason: `qemu-img info ${image} failed: ${(r.stderr || r.err.message).trim().slice(0, 300)}` };
  let info: { 'format-specific'?: { data?: { bitmaps?: { name?: unknown; flags?: unknown }[] } } };
  try {
    info = JSON.parse(r.stdout) as typeof info;
  } catch {
    return { reason: `qemu-img info ${image} printed no JSON` };
  }
  const list = info['format-specific']?.data?.bitmaps ?? [];
  return {
    bitmaps: list
      .filter((b) => typeof b.name === 'string')
      .map((b) => {
        const flags = Array.isArray(b.flags) ? (b.flags as unknown[]) : [];
        return { name: b.name as string, inUse: flags.includes('in-use'), recording: flags.includes('auto') };
      }),
  };
}

export interface ImageExport {
  /** `unix:<socket>`. */
  address: string;
  exportName: string;
  stop(): Promise<void>;
}

/**
 * Serves a qcow2 image at rest read-only over NBD on a unix socket with one of its persistent
 * bitmaps (`qemu-nbd -r -B`), so the NBD transport reads `qemu:dirty-bitmap:<bitmap>`. qemu-nbd's
 * image lock keeps QEMU from opening the image for writing while it runs (a domain started
 * meanwhile fails to start instead of changing the disk under the read). It dies with this process
 * (`setpriv --pdeathsig`, where there is setpriv) and is stopped at release.
 */
export async function exportImage(opts: { image: string; bitmap: string; socket: string; exportName: string; readyMs?: number }): Promise<ImageExport> {
  await fs.rm(opts.socket, { force: true });
  const args = ['--read-only', '--persistent', '--shared=16', '-f', 'qcow2', '-B', opts.bitmap, '-x', opts.exportName, '-k', opts.socket, opts.image];
  const setpriv = hasSetpriv();
  const child = spawn(setpriv ? 'setpriv' : 'qemu-nbd', setpriv ? ['--pdeathsig', 'KILL', '--', 'qemu-nbd', ...args] : args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (stderr.length < 8192) stderr += b.toString();
  });
  let spawnError: Error | undefined;
  child.once('error', (err) => (spawnError = err));
  const stop = (): Promise<void> => stopChild(child, opts.socket);
  const deadline = Date.now() + (opts.readyMs ?? 10_000);
  while (!existsSync(opts.socket)) {
    if (spawnError || child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`qemu-nbd did not serve ${opts.image}: ${spawnError?.message ?? (stderr.trim() || `exit ${child.exitCode ?? 'timeout'}`)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { address: `unix:${opts.socket}`, exportName: opts.exportName, stop };
}

let setprivKnown: boolean | undefined;
function hasSetpriv(): boolean {
  setprivKnown ??= spawnSync('setpriv', ['--version'], { stdio: 'ignore' }).status === 0;
  return setprivKnown;
}

async function stopChild(child: ChildProcess, socket: string): Promise<void> {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await gone;
    clearTimeout(timer);
  }
  await fs.rm(socket, { force: true });
}
