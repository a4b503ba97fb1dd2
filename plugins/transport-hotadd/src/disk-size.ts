import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { FerryError, type SourceDisk } from '@ferry/core/plugin';

/**
 * Size in bytes of an open raw image: the file size, or for a block device the sector count the
 * kernel publishes in sysfs (fstat reports 0 for devices).
 */
export async function diskSize(fh: FileHandle, disk: SourceDisk): Promise<number> {
  const st = await fh.stat({ bigint: true });
  if (st.isFile()) return Number(st.size);
  if (!st.isBlockDevice()) {
    throw new FerryError('TRANSPORT_UNAVAILABLE', `${disk.path} is neither an image file nor a block device`, {
      disk: disk.name,
    });
  }
  const { major, minor } = deviceNumbers(st.rdev);
  const sysfs = `/sys/dev/block/${major}:${minor}/size`;
  try {
    const sectors = (await fs.readFile(sysfs, 'utf8')).trim();
    if (/^\d+$/.test(sectors)) return Number(sectors) * 512;
  } catch {
    // reported below
  }
  throw new FerryError('TRANSPORT_UNAVAILABLE', `cannot tell the size of block device ${disk.path} from ${sysfs}`, {
    disk: disk.name,
  });
}

/** Linux `major()` / `minor()` of a device number (glibc's encoding: 12-bit major, 20-bit minor, split). */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & 0xfffff000n);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & 0xffffff00n);
  return { major: Number(major), minor: Number(minor) };
}
