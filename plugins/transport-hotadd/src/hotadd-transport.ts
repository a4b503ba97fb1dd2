import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { FerryError, type DiskHandle, type ProbeResult, type SourceDisk, type Transport } from '@ferry/core/plugin';
import { detectQcow2 } from './detect-qcow2.js';
import { diskSize } from './disk-size.js';
import { HotaddDiskHandle, readAtFile, type ReadAt } from './hotadd-disk-handle.js';
import { ImageFile } from './qcow2/image-file.js';
import { openImageChain } from './qcow2/open-image-chain.js';
import { Qcow2DiskHandle } from './qcow2/qcow2-disk-handle.js';
import { loadSeekAddon, type SeekAddon } from './seek-addon.js';

/** Seams for specs; production code passes nothing. */
export interface HotaddOptions {
  /** The lseek addon; `null` acts as if it could not be loaded. Default: the addon built at install. */
  seek?: SeekAddon | null;
  /** The positional read the handles use. Default: `FileHandle.read`. */
  readAt?: ReadAt;
}

/**
 * Hot-add transport: the backup proxy opens the snapshot's disk directly on the datastore: a raw
 * image or block device (holes found with SEEK_DATA / SEEK_HOLE), or a qcow2 image with its backing
 * chain, read from the format's own metadata.
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
    let handle: DiskHandle;
    try {
      handle = await this.open(disk);
    } catch (err) {
      if (err instanceof FerryError) return { ok: false, reason: err.detail };
      throw err;
    }
    await handle.close();
    if (handle instanceof Qcow2DiskHandle) {
      return { ok: true, reason: `datastore path ${disk.path} (${handle.describe()}) is readable from this proxy` };
    }
    const holes = this.seek ? '' : '; hole detection is unavailable (ferry_seek addon not loaded), every byte is read';
    return { ok: true, reason: `datastore path ${disk.path} is readable from this proxy${holes}` };
  }

  async open(disk: SourceDisk): Promise<DiskHandle> {
    const path = checkedPath(disk);
    const fh = await openReadOnly(path, disk);
    try {
      const size = await diskSize(fh, disk);
      const magic = await detectQcow2(fh);
      if (magic || disk.format === 'qcow2') return await this.openQcow2(new ImageFile(path, fh, size, this.readAt, disk.name), disk, magic);
      return new HotaddDiskHandle(fh, size, disk.name, { seek: this.seek, readAt: this.readAt });
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw err;
    }
  }

  /**
   * A disk declared raw whose first bytes are the qcow2 magic is refused, not read as qcow2: on a raw
   * disk those bytes belong to the guest, and following a guest-written header would let the guest
   * choose which host files (backing files) end up in the backup.
   */
  private async openQcow2(file: ImageFile, disk: SourceDisk, magic: boolean): Promise<DiskHandle> {
    if (!magic) throw file.error('TRANSPORT_UNSUPPORTED_FORMAT', `${file.path} is declared qcow2 but does not start with the qcow2 magic`);
    if (disk.format === 'raw') {
      throw file.error(
        'TRANSPORT_UNSUPPORTED_FORMAT',
        `${file.path} is declared raw but starts with the qcow2 magic; declare format: qcow2 if it is a qcow2 image`,
      );
    }
    const { layer, files } = await openImageChain(file, { diskName: disk.name, readAt: this.readAt, seek: this.seek });
    return new Qcow2DiskHandle(layer, files, disk.name);
  }
}

/** The disk's path, once it is known to name an image hot-add can read. */
function checkedPath(disk: SourceDisk): string {
  if (!disk.path) {
    throw new FerryError('TRANSPORT_UNAVAILABLE', 'the disk has no datastore path this proxy could open', { disk: disk.name });
  }
  if (disk.format !== undefined && disk.format !== 'raw' && disk.format !== 'qcow2') {
    throw new FerryError('TRANSPORT_UNSUPPORTED_FORMAT', `${disk.path} is a ${disk.format} image; hot-add reads raw and qcow2 images`, {
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
