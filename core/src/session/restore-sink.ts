import { constants as fsConstants, promises as fs } from 'node:fs';
import path from 'node:path';
import type { WritableDisk } from '../contracts/transport.js';
import { FerryError } from '../errors.js';
import { openBlockDevice } from './restore-device.js';
import type { JobRuntime } from './job-runtime.js';
import { ALIGNMENT } from '../util/aligned-memory.js';

/**
 * Where a restore writes: a regular file (zero blocks become holes), a block device (zeros are
 * written), or a transport's restore target such as an NBD export (zeros through WRITE_ZEROES when
 * the target offers it). An existing file or any block device is written only with `force`.
 */
export interface RestoreSink {
  readonly label: string;
  /** Whether zero blocks stay holes (reported as `sparse`). */
  readonly sparse: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  /**
   * `write` for a range nothing was written to yet through this sink (a restore writes each block
   * once; a block sent again holds the same bytes): on a sparse file, zero runs of at least
   * `MIN_HOLE` bytes inside `data` stay holes instead of being written.
   */
  writeFresh(offset: number, data: Uint8Array): Promise<void>;
  zero(offset: number, length: number): Promise<void>;
  /**
   * Durable on success. `ok: false` removes a partial file only when this restore created it, and
   * returns a sentence saying what the target holds now (for the error), or undefined.
   */
  finish(ok: boolean): Promise<string | undefined>;
}

/** Addresses that name a network target rather than a local path. */
export function isTargetAddress(to: string): boolean {
  return /^(nbds?(\+unix)?:\/\/|unix:|tcp:)/.test(to);
}

/**
 * The shortest zero run inside a data block left as a hole by `writeFresh` (a multiple of the page
 * size). Shorter runs are written with the data around them: a hole costs a write call of its own.
 */
export const MIN_HOLE = 64 * 1024;
const PAGE = 4096;
const ZERO_PAGE = new Uint8Array(PAGE);

/**
 * The ranges of `data` to write when zero runs of at least `minHole` bytes (whole pages, counted
 * from the start of `data`) may stay holes: [start, end) pairs, in order; none when all is zero.
 */
export function dataRanges(data: Uint8Array, minHole = MIN_HOLE): [number, number][] {
  const out: [number, number][] = [];
  let start = 0; // start of the data range being collected
  let zeroFrom = -1; // start of the current run of zero pages, or -1
  for (let p = 0; p < data.length; p += PAGE) {
    const end = Math.min(p + PAGE, data.length);
    // Most data pages differ from zeros in their first or last byte: compare only candidates.
    const zero = data[p] === 0 && data[end - 1] === 0 && Buffer.compare(data.subarray(p, end), ZERO_PAGE.subarray(0, end - p)) === 0;
    if (zero) {
      if (zeroFrom < 0) zeroFrom = p;
      continue;
    }
    if (zeroFrom >= 0 && p - zeroFrom >= minHole) {
      if (zeroFrom > start) out.push([start, zeroFrom]);
      start = p;
    }
    zeroFrom = -1;
  }
  const tail = zeroFrom >= 0 && data.length - zeroFrom >= minHole ? zeroFrom : data.length;
  if (tail > start) out.push([start, tail]);
  return out;
}

/** Bytes written to a file or device between two background datasyncs. */
const WRITE_BACK_BYTES = 64 * 1024 * 1024;

export interface SinkOptions {
  /** Overwrite a file or block device that exists (`ferry restore --force`). */
  force?: boolean;
}

/** A local target opened for writing, and what the restore may do to it when it fails. */
interface OpenedTarget {
  fh: fs.FileHandle;
  device: boolean;
  /** This restore created the file (O_EXCL): it alone may remove it on failure. */
  created: boolean;
}

/**
 * Opens a local file or block device. Without `force` an existing path is refused and a new file is
 * created with O_EXCL, so of two restores to one new path exactly one gets it. With `force` an
 * existing file is truncated (holes would otherwise keep its old data) and a device is opened
 * exclusively.
 */
async function openLocalTarget(to: string, size: number, disk: string, force: boolean): Promise<OpenedTarget> {
  const exists = (what: string): FerryError =>
    new FerryError('RESTORE_TARGET_EXISTS', `${to} already exists (${what}); pass --force to overwrite it`, { disk });
  const st = await fs.stat(to).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw new FerryError('RESTORE_TARGET', `cannot look at ${to}: ${err.code}`, { disk });
  });
  if (st?.isBlockDevice()) {
    if (!force) throw exists('a block device');
    return { fh: await openBlockDevice(to, size, disk), device: true, created: false };
  }
  if (st && !force) throw exists(st.isFile() ? `a file of ${st.size} bytes` : 'not a regular file');
  let fh: fs.FileHandle | undefined;
  let created = false;
  try {
    fh = await fs.open(to, 'wx').catch(async (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
      if (force) return undefined;
      const link = await fs.lstat(to).then((l) => l.isSymbolicLink(), () => false);
      throw exists(link ? 'a symbolic link to nothing' : 'it appeared while this restore started');
    });
    created = fh !== undefined;
    fh ??= await fs.open(to, 'w');
    await fh.truncate(size);
    return { fh, device: false, created };
  } catch (err) {
    if (err instanceof FerryError) throw err;
    await fh?.close();
    if (created) await fs.rm(to, { force: true }).catch(() => undefined);
    // Opening an existing file for writing has already emptied it.
    const state = fh && !created ? `; ${to} was truncated to 0 bytes, its old contents are not kept` : '';
    throw new FerryError('RESTORE_TARGET', `cannot open ${to} for writing: ${(err as NodeJS.ErrnoException).code}${state}`, { disk });
  }
}

/**
 * What a failed restore left at `to`: a file it created is removed (only if the path still names
 * that file); anything else stays, and the sentence says what it holds now.
 */
async function leftBehind(to: string, t: OpenedTarget, size: number, written: number): Promise<string> {
  if (t.created) {
    const same = await Promise.all([t.fh.stat(), fs.stat(to)]).then(([a, b]) => a.ino === b.ino && a.dev === b.dev, () => false);
    if (!same) return `${to}, which this restore created, was not removed: the path now names another file`;
    return fs.unlink(to).then(
      () => `the partly written ${to}, which this restore created, was removed`,
      (err: NodeJS.ErrnoException) => `the partly written ${to} could not be removed (${err.code})`,
    );
  }
  const first = written ? `its first ${written} bytes may hold restored data` : 'no restored data reached it';
  if (t.device) return `the block device ${to} was partly overwritten: ${first}, the rest holds what it held before`;
  return `${to} was kept but truncated and partly overwritten: ${first}, the rest of its ${size} bytes reads as zeros; its old contents are not kept`;
}

export async function fileSink(to: string, size: number, disk: string, opts: SinkOptions = {}): Promise<RestoreSink> {
  const target = await openLocalTarget(to, size, disk, Boolean(opts.force));
  const { fh, device } = target;
  const zeros = device ? Buffer.alloc(1024 * 1024) : undefined;
  // The end of the furthest range a write was started for: what a failure says may hold restored data.
  let reached = 0;
  // Write-back while restoring: without it the kernel keeps a whole disk's worth of dirty pages (well
  // under its background threshold on a large machine) and the final fsync writes all of it at the
  // end, serially (3.3 s of a 15 s restore of 1.2 GiB here). One datasync at a time, never awaited
  // by the writes; the last one is awaited before the final fsync.
  let unsynced = 0;
  let syncing: Promise<void> | undefined;
  const writeBack = (n: number): void => {
    unsynced += n;
    if (unsynced < WRITE_BACK_BYTES || syncing) return;
    unsynced = 0;
    syncing = fh.datasync().catch(() => undefined).finally(() => (syncing = undefined)); // errors surface in the final fsync
  };
  // Whole pages of fresh data go through a second descriptor with O_DIRECT when the file system
  // takes it: from the block slot straight to the device, without copying the data into the page
  // cache and writing it back from there (0.5-2.5 s of kernel time per GiB here, the most when ext4
  // allocates at write-back in a folder of large fresh files). The first EINVAL (a buffer or file
  // system that does not allow it) turns it off, and that range and the rest go as before. A write
  // in flight when another lane closes the descriptor completes first (FileHandle.close waits).
  let direct = device ? undefined : await openDirect(fh);
  const write = async (offset: number, data: Uint8Array, fresh = false): Promise<void> => {
    reached = Math.max(reached, offset + data.length);
    for (let pos = 0; pos < data.length; ) {
      const n = data.length - pos;
      const whole = fresh && direct && (offset + pos) % ALIGNMENT === 0 ? n - (n % ALIGNMENT) : 0;
      try {
        if (whole > 0) {
          try {
            pos += (await direct!.write(data, pos, whole, offset + pos)).bytesWritten;
            continue;
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
            const d = direct;
            direct = undefined;
            await d?.close().catch(() => undefined);
          }
        }
        pos += (await fh.write(data, pos, n, offset + pos)).bytesWritten;
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        const hint = e.code === 'ENOSPC' ? ' (the target disk is full)' : '';
        throw new FerryError('RESTORE_TARGET', `cannot write ${to}: ${e.code}${hint}`, { disk, offset: offset + pos });
      }
    }
    writeBack(data.length);
  };
  return {
    label: to,
    sparse: !device,
    write,
    writeFresh: async (offset, data) => {
      if (device) return write(offset, data);
      // The file was created or truncated by this sink: what is not written reads as zeros.
      for (const [a, b] of dataRanges(data)) await write(offset + a, data.subarray(a, b), true);
    },
    zero: async (offset, length) => {
      for (let pos = 0; zeros && pos < length; pos += zeros.length) await write(offset + pos, zeros.subarray(0, Math.min(zeros.length, length - pos)));
    },
    finish: async (ok) => {
      let flushFailed: string | undefined;
      // Every write has settled: the data written through it is in the file, which `fh` syncs.
      await direct?.close().catch(() => undefined);
      direct = undefined;
      try {
        await syncing;
        if (ok) {
          await fh.sync();
          // A file this restore created is durable only with its name: the folder's entry too.
          if (target.created) await syncFolder(path.dirname(to));
        }
      } catch (err) {
        flushFailed = (err as NodeJS.ErrnoException).code ?? String(err);
      }
      if (ok && !flushFailed) {
        await fh.close();
        return undefined;
      }
      let state: string;
      try {
        state = await leftBehind(to, target, size, reached);
      } finally {
        await fh.close();
      }
      if (ok) throw new FerryError('RESTORE_TARGET', `cannot flush ${to}: ${flushFailed}; ${state}`, { disk });
      return state;
    },
  };
}

/**
 * The open file again with O_DIRECT (through /proc, so it is the same file whatever its path names
 * now), or undefined where that is not offered (not Linux, a file system without direct I/O).
 */
async function openDirect(fh: fs.FileHandle): Promise<fs.FileHandle | undefined> {
  const O_DIRECT = fsConstants.O_DIRECT as number | undefined;
  if (!O_DIRECT || process.env.FERRY_RESTORE_DIRECT === '0') return undefined;
  return fs.open(`/proc/self/fd/${fh.fd}`, fsConstants.O_WRONLY | O_DIRECT).catch(() => undefined);
}

async function syncFolder(dir: string): Promise<void> {
  const d = await fs.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/**
 * The error a failed restore reports: its own, with what the target holds now added (`state`, from
 * `RestoreSink.finish(false)`), so an admin knows whether to delete, keep or restore again.
 */
export function withTargetState(err: unknown, state: string | undefined): unknown {
  if (!state) return err;
  if (err instanceof FerryError) return new FerryError(err.code, `${err.detail}; ${state}`, err.where, { cause: err.cause });
  if (err instanceof Error) err.message += `; ${state}`;
  return err;
}

export function targetSink(target: WritableDisk, size: number, disk: string): RestoreSink {
  if (target.size < size) {
    void target.close();
    throw new FerryError('RESTORE_TARGET', `${target.label} holds ${target.size} bytes; the disk needs ${size}`, { disk });
  }
  const zeros = target.writeZeroes ? undefined : Buffer.alloc(1024 * 1024);
  return {
    label: target.label,
    sparse: Boolean(target.writeZeroes),
    write: (offset, data) => target.write(offset, data),
    writeFresh: (offset, data) => target.write(offset, data),
    zero: async (offset, length) => {
      if (target.writeZeroes) return target.writeZeroes(offset, length);
      for (let pos = 0; pos < length; pos += zeros!.length) await target.write(offset + pos, zeros!.subarray(0, Math.min(zeros!.length, length - pos)));
    },
    finish: async (ok) => {
      try {
        if (ok) await target.flush();
      } finally {
        await target.close();
      }
      return undefined;
    },
  };
}

/** A local file or device, or a network target one of the job's transports can write (e.g. NBD). */
export async function openRestoreSink(rt: JobRuntime, to: string, size: number, disk: string, opts: SinkOptions = {}): Promise<RestoreSink> {
  // An NBD export always exists and has a size of its own: `force` does not apply to it.
  if (!isTargetAddress(to)) return fileSink(to, size, disk, opts);
  for (const name of rt.autoTransports()) {
    const transport = await rt.transport(name);
    const target = await transport.openTarget?.(to);
    if (target) return targetSink(target, size, disk);
  }
  throw new FerryError('RESTORE_TARGET', `no transport can write to ${to}`, { disk });
}
