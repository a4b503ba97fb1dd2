import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { FerryError, type DiskHandle, type ProbeResult, type SourceDisk, type Transport } from '@ferry/core';
import { detectQcow2 } from './detect-qcow2.js';
import { diskSize } from './disk-size.js';
import { HotaddDiskHandle, readAtFile, type ReadAt } from './hotadd-disk-handle.js';
import { loadSeekAddon, type SeekAddon } from './seek-addon.js';

const QCOW2_LATER = 'qcow2 images are read by hot-add once qcow2 support lands; use raw';

/** Seams for specs; production code passes nothing. */
export interface HotaddOptions {
  /** The lseek addon; `null` acts as if it could not be loaded. Default: the addon built at install. */
  seek?: SeekAddon | null;
  /** The positional read the handles use. Default: `FileHandle.read`. */
  readAt?: ReadAt;
}

/**
 * Hot-add transport: the backup proxy opens the snapshot's raw image or block device directly on the
 * datastore and skips holes found with SEEK_DATA / SEEK_HOLE.
 */
export class HotaddTransport implements Transport {
  private readonly seek: SeekAddon | undefined;
  private readonly readAt: ReadAt;

  constructor(options: HotaddOptions = {}) {
    this.seek = options.seek === null ? undefined : (options.seek ?? loadSeekAddon());
    this.readAt = options.readAt ?? readAtFile;
  }

  /** Opens and closes the disk: whatever would make `open` fail is the reason it cannot read it. */
  async probe(disk: SourceDisk): Promise<ProbeResult> {
    try {
      await (await this.open(disk)).close();
    } catch (err) {
      if (err instanceof FerryError) return { ok: false, reason: err.detail };
      throw err;
    }
    const holes = this.seek ? '' : '; hole detection is unavailable (ferry_seek addon not loaded), every byte is read';
    return { ok: true, reason: `datastore path ${disk.path} is readable from this proxy${holes}` };
  }

  async open(disk: SourceDisk): Promise<DiskHandle> {
    const path = checkedPath(disk);
    const fh = await openReadOnly(path, disk);
    try {
      const size = await diskSize(fh, disk);
      if (await detectQcow2(fh)) {
        throw new FerryError('TRANSPORT_UNSUPPORTED_FORMAT', `${path} is a qcow2 image; ${QCOW2_LATER}`, { disk: disk.name });
      }
      return new HotaddDiskHandle(fh, size, disk.name, { seek: this.seek, readAt: this.readAt });
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }
}

/** The disk's path, once it is known to name an image hot-add can read. */
function checkedPath(disk: SourceDisk): string {
  if (!disk.path) {
    throw new FerryError('TRANSPORT_UNAVAILABLE', 'the disk has no datastore path this proxy could open', { disk: disk.name });
  }
  if (disk.format === 'qcow2') {
    throw new FerryError('TRANSPORT_UNSUPPORTED_FORMAT', `${disk.path} is a qcow2 image; ${QCOW2_LATER}`, { disk: disk.name });
  }
  if (disk.format !== undefined && disk.format !== 'raw') {
    throw new FerryError('TRANSPORT_UNSUPPORTED_FORMAT', `${disk.path} is a ${disk.format} image; hot-add reads raw images`, {
      disk: disk.name,
    });
  }
  return disk.path;
}

async function openReadOnly(path: string, disk: SourceDisk): Promise<FileHandle> {
  try {
    return await fs.open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw new FerryError('TRANSPORT_UNAVAILABLE', `datastore path ${path} cannot be opened from this proxy: ${code}`, {
      disk: disk.name,
    });
  }
}
