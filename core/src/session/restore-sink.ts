import { promises as fs } from 'node:fs';
import type { WritableDisk } from '../contracts/transport.js';
import { FerryError } from '../errors.js';

/**
 * Where a restore writes: a regular file (zero blocks become holes), a block device (zeros are
 * written), or a transport's restore target such as an NBD export (zeros through WRITE_ZEROES when
 * the target offers it).
 */
export interface RestoreSink {
  readonly label: string;
  /** Whether zero blocks stay holes (reported as `sparse`). */
  readonly sparse: boolean;
  write(offset: number, data: Uint8Array): Promise<void>;
  zero(offset: number, length: number): Promise<void>;
  /** Durable on success; `ok: false` removes a partial file the restore created. */
  finish(ok: boolean): Promise<void>;
}

/** Addresses that name a network target rather than a local path. */
export function isTargetAddress(to: string): boolean {
  return /^(nbds?(\+unix)?:\/\/|unix:|tcp:)/.test(to);
}

export async function fileSink(to: string, size: number, disk: string): Promise<RestoreSink> {
  const device = await fs.stat(to).then((st) => st.isBlockDevice(), () => false);
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(to, device ? 'r+' : 'w');
    if (!device) await fh.truncate(size);
  } catch (err) {
    throw new FerryError('RESTORE_TARGET', `cannot open ${to} for writing: ${(err as NodeJS.ErrnoException).code}`, { disk });
  }
  const zeros = device ? Buffer.alloc(1024 * 1024) : undefined;
  const write = async (offset: number, data: Uint8Array): Promise<void> => {
    for (let pos = 0; pos < data.length; ) {
      try {
        pos += (await fh.write(data, pos, data.length - pos, offset + pos)).bytesWritten;
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        const hint = e.code === 'ENOSPC' ? ' (the target disk is full)' : '';
        throw new FerryError('RESTORE_TARGET', `cannot write ${to}: ${e.code}${hint}`, { disk, offset: offset + pos });
      }
    }
  };
  return {
    label: to,
    sparse: !device,
    write,
    zero: async (offset, length) => {
      for (let pos = 0; zeros && pos < length; pos += zeros.length) await write(offset + pos, zeros.subarray(0, Math.min(zeros.length, length - pos)));
    },
    finish: async (ok) => {
      try {
        if (ok) await fh.sync();
      } finally {
        await fh.close();
        if (!ok && !device) await fs.rm(to, { force: true }).catch(() => undefined);
      }
    },
  };
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
    },
  };
}
