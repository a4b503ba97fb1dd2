import type { FileHandle } from 'node:fs/promises';
import { FerryError, type AllocationExtent, type DiskHandle } from '@ferry/core/plugin';
import type { SeekAddon } from './seek-addon.js';
import { seekExtents } from './seek-extents.js';

/** One positional read into `into[at, at+length)`; resolves to the bytes read, 0 at end of file. */
export type ReadAt = (fh: FileHandle, into: Buffer, at: number, length: number, position: number) => Promise<number>;

export const readAtFile: ReadAt = async (fh, into, at, length, position) =>
  (await fh.read(into, at, length, position)).bytesRead;

export interface HotaddIo {
  /** Missing: holes cannot be found, so `blockStatus` is left out and every byte counts as data. */
  seek?: SeekAddon;
  readAt: ReadAt;
}

/**
 * An open raw image or block device. Reads are positional, so several may be in flight on the one
 * descriptor without a shared file position.
 */
export class HotaddDiskHandle implements DiskHandle {
  /** Present only with the seek addon: the contract's default (all data) is the honest answer without it. */
  readonly blockStatus?: (offset: number, length: number) => Promise<AllocationExtent[]>;
  /**
   * The image's descriptor, for the core's block threads to read blocks themselves (`DiskHandle.fd`):
   * only when reads are the plain positional reads of `readAtFile`.
   */
  readonly fd?: number;
  private closed = false;

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly diskName: string,
    private readonly io: HotaddIo,
  ) {
    if (io.readAt === readAtFile) this.fd = fh.fd;
    const seek = io.seek;
    if (seek) this.blockStatus = async (offset, length) => this.allocation(seek, offset, length);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(isRange(offset, length) ? length : 0);
    await this.readInto(offset, out, length);
    return out;
  }

  async readInto(offset: number, into: Uint8Array, length = into.length): Promise<void> {
    if (!isRange(offset, length) || offset + length > this.size) {
      throw this.failure(`read of ${length} bytes at ${offset} is outside the disk (${this.size} bytes)`, offset);
    }
    const out = Buffer.isBuffer(into) ? into : Buffer.from(into.buffer, into.byteOffset, into.byteLength);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = await this.io.readAt(this.fh, out, done, length - done, offset + done);
      } catch (err) {
        throw this.failure(`reading ${length} bytes failed at byte ${offset + done}: ${errnoOf(err)}`, offset, err);
      }
      // The size was taken at open; an image that ends early has changed under the snapshot.
      if (n === 0) throw this.failure(`the image ends at byte ${offset + done}, inside a read of ${length} bytes`, offset);
      done += n;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.fh.close();
  }

  private async allocation(seek: SeekAddon, offset: number, length: number): Promise<AllocationExtent[]> {
    // Asking past the end is allowed (the reply stops at the end); asking for nothing is not.
    if (!isRange(offset, length) || length === 0 || offset >= this.size) {
      throw this.failure(`block status of ${length} bytes at ${offset} is outside the disk (${this.size} bytes)`, offset);
    }
    try {
      return seekExtents(seek, this.fh.fd, offset, Math.min(this.size, offset + length));
    } catch (err) {
      throw this.failure(`finding holes failed: ${errnoOf(err)}`, offset, err);
    }
  }

  private failure(detail: string, offset: number, cause?: unknown): FerryError {
    return new FerryError('TRANSPORT_READ_FAILED', detail, { disk: this.diskName, offset }, { cause });
  }
}

function isRange(offset: number, length: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0;
}

function errnoOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? (e instanceof Error ? e.message : String(err));
}
