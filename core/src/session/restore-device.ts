import { constants, promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';

/**
 * Checks for a block device as a restore target. A device always exists, so the caller asks for
 * `--force` first; these refuse one that is too small or that something else holds (mounted, part of
 * an MD/LVM/dm stack, or opened exclusively by another restore).
 */

/** Major and minor number of a Linux device number (`stat().rdev`, glibc's `makedev` encoding). */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  const major = Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n));
  const minor = Number((rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n));
  return { major, minor };
}

/**
 * Size in bytes of a block device, from sysfs (`/sys/dev/block/MAJ:MIN/size`, in 512-byte sectors
 * whatever the device's logical block size). `stat` reports 0 for a device, so this is the way to
 * learn it without an ioctl.
 */
export async function blockDeviceSize(to: string, disk: string): Promise<number> {
  const { rdev } = await fs.stat(to, { bigint: true });
  const { major, minor } = deviceNumbers(rdev);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  try {
    const sectors = Number((await fs.readFile(sysfs, 'utf8')).trim());
    if (!Number.isSafeInteger(sectors) || sectors < 0) throw new Error(`not a sector count`);
    return sectors * 512;
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new FerryError('RESTORE_TARGET', `cannot tell the size of block device ${to} (${sysfs}: ${why})`, { disk });
  }
}

/** Refuses a device smaller than the disk; naming both sizes. A larger one keeps its tail as it was. */
export function checkDeviceFits(to: string, deviceBytes: number, diskBytes: number, disk: string): void {
  if (deviceBytes < diskBytes) {
    throw new FerryError('RESTORE_TARGET', `block device ${to} holds ${deviceBytes} bytes; the disk needs ${diskBytes}`, { disk });
  }
}

/** The error for a device that cannot be opened; EBUSY from an O_EXCL open means mounted or in use. */
export function deviceOpenError(to: string, errno: string | undefined, disk: string): FerryError {
  if (errno === 'EBUSY') {
    return new FerryError('RESTORE_TARGET', `block device ${to} is mounted or in use (EBUSY on an exclusive open); unmount it or stop what holds it`, { disk });
  }
  return new FerryError('RESTORE_TARGET', `cannot open block device ${to} for writing: ${errno}`, { disk });
}

/**
 * Opens a block device for writing, exclusively: on Linux O_EXCL without O_CREAT fails with EBUSY
 * while the device is mounted or claimed, and holds the claim until closed so nothing mounts it while
 * the restore writes. Checks its size after the claim, so the size read is of the device written.
 */
export async function openBlockDevice(to: string, diskBytes: number, disk: string): Promise<fs.FileHandle> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(to, constants.O_RDWR | constants.O_EXCL);
  } catch (err) {
    throw deviceOpenError(to, (err as NodeJS.ErrnoException).code, disk);
  }
  try {
    checkDeviceFits(to, await blockDeviceSize(to, disk), diskBytes, disk);
    return fh;
  } catch (err) {
    await fh.close();
    throw err;
  }
}
