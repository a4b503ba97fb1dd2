import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import type { JobRuntime } from './job-runtime.js';

export interface RestoreOptions {
  vm: string;
  disk: string;
  /** Restore point id, or `latest`. */
  point: string;
  /** Target file or block device. */
  to: string;
  /** Blocks fetched and written at once. */
  concurrency?: number;
  onProgress?: (doneBytes: number, sizeBytes: number) => void;
}

export interface RestoreReport {
  vm: string;
  disk: string;
  restorePoint: string;
  to: string;
  sizeBytes: number;
  bytesWritten: number;
  zeroBytes: number;
  sparse: boolean;
  durationMs: number;
}

/**
 * Writes one disk of a restore point to a file or block device. Every block is checked (CRC-32 of
 * the stored object, SHA-256 of the content against the block map) before it is written; a damaged
 * block stops the restore with its object, disk and offset named. Zero blocks become holes in a
 * regular file and are written as zeros to a device.
 */
export async function restoreDisk(rt: JobRuntime, opts: RestoreOptions): Promise<RestoreReport> {
  const t0 = performance.now();
  const repo = await rt.repository({ create: false });
  const point = await repo.getPoint(opts.vm, opts.point);
  const disk = point.disks.find((d) => d.name === opts.disk);
  if (!disk) {
    throw new FerryError(
      'RESTORE_NOT_FOUND',
      `restore point ${point.id} of vm ${opts.vm} has no disk "${opts.disk}"; its disks: ${point.disks.map((d) => d.name).join(', ')}`,
      { vm: opts.vm, disk: opts.disk },
    );
  }
  const map = await repo.readMap(disk);
  const codec = await rt.codec();
  const device = await isBlockDevice(opts.to);
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(opts.to, device ? 'r+' : 'w');
  } catch (err) {
    throw new FerryError('RESTORE_TARGET', `cannot open ${opts.to} for writing: ${(err as NodeJS.ErrnoException).code}`, { disk: opts.disk });
  }
  const report: RestoreReport = {
    vm: opts.vm,
    disk: opts.disk,
    restorePoint: point.id,
    to: opts.to,
    sizeBytes: map.diskSize,
    bytesWritten: 0,
    zeroBytes: 0,
    sparse: !device,
    durationMs: 0,
  };
  let ok = false;
  try {
    if (!device) await fh.truncate(map.diskSize);
    const zero = device ? Buffer.alloc(map.blockSize) : undefined;
    let next = 0;
    let done = 0;
    const worker = async (): Promise<void> => {
      while (next < map.blockCount) {
        const i = next++;
        const offset = i * map.blockSize;
        const length = map.lengthOf(i);
        const hash = map.get(i);
        let data: Uint8Array | undefined;
        if (hash) {
          data = await repo.blocks.read(hash, codec).catch((err) => {
            throw err instanceof FerryError ? err.at({ vm: opts.vm, disk: opts.disk, offset }) : err;
          });
          if (data.length !== length) {
            throw new FerryError('REPO_CORRUPT_OBJECT', `block holds ${data.length} bytes, the map expects ${length}`, {
              vm: opts.vm,
              disk: opts.disk,
              offset,
            });
          }
          report.bytesWritten += length;
        } else {
          report.zeroBytes += length;
          data = zero?.subarray(0, length);
        }
        if (data) await writeAll(fh, data, offset, opts);
        done += length;
        opts.onProgress?.(done, map.diskSize);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));
    await fh.sync();
    ok = true;
  } finally {
    await fh.close();
    if (!ok && !device) await fs.rm(opts.to, { force: true }).catch(() => undefined);
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

async function writeAll(fh: fs.FileHandle, data: Uint8Array, offset: number, opts: RestoreOptions): Promise<void> {
  let pos = 0;
  while (pos < data.length) {
    try {
      const { bytesWritten } = await fh.write(data, pos, data.length - pos, offset + pos);
      pos += bytesWritten;
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const hint = e.code === 'ENOSPC' ? ' (the target disk is full)' : '';
      throw new FerryError('RESTORE_TARGET', `cannot write ${opts.to}: ${e.code}${hint}`, { disk: opts.disk, offset: offset + pos });
    }
  }
}

async function isBlockDevice(p: string): Promise<boolean> {
  try {
    return (await fs.stat(p)).isBlockDevice();
  } catch {
    return false;
  }
}
