import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import type { Allocation, DiskImage } from './disk-image.js';
import { checkRange } from './point-reader.js';

/**
 * A raw image file as a `DiskImage`: for readers of disk contents (partition tables, file systems)
 * tested against images the real tools made, and for serving a local file. Every range counts as
 * data (Node has no SEEK_DATA/SEEK_HOLE).
 */
export class FileImage implements DiskImage {
  private constructor(
    private readonly fh: fs.FileHandle,
    readonly size: number,
    readonly blockSize: number,
  ) {}

  static async open(file: string, blockSize = 1024 * 1024): Promise<FileImage> {
    const fh = await fs.open(file, 'r').catch((err: NodeJS.ErrnoException) => {
      throw new FerryError('RESTORE_NOT_FOUND', `cannot open ${file}: ${err.code}`, { object: file });
    });
    return new FileImage(fh, (await fh.stat()).size, blockSize);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length);
    const out = Buffer.alloc(length);
    for (let done = 0; done < length; ) {
      const { bytesRead } = await this.fh.read(out, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return out;
  }

  allocation(offset: number, length: number): Allocation[] {
    const end = Math.min(this.size, offset + length);
    return end > offset ? [{ offset, length: end - offset, zero: false }] : [];
  }

  async close(): Promise<void> {
    await this.fh.close().catch(() => undefined);
  }
}
