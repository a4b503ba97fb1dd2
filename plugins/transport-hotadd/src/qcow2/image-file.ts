import type { FileHandle } from 'node:fs/promises';
import { FerryError, type ErrorCode } from '@ferry/core/plugin';
import type { ReadAt } from '../hotadd-disk-handle.js';

/**
 * One open file of an image chain (a qcow2 image or a raw backing file). Every read is checked
 * against the file size taken at open, so an offset from corrupt or hostile metadata becomes an error
 * naming the file and the offset before any buffer is sized from it.
 */
export class ImageFile {
  constructor(
    readonly path: string,
    private readonly fh: FileHandle,
    /** Bytes in the file (for a block device: the device size). */
    readonly size: number,
    private readonly readAt: ReadAt,
    private readonly diskName: string,
  ) {}

  get fd(): number {
    return this.fh.fd;
  }

  /** Reads `length` bytes of `what` at file offset `position`; the whole range must lie in the file. */
  async read(position: number, length: number, what: string): Promise<Buffer> {
    this.checkRange(position, length, what);
    const out = Buffer.allocUnsafe(length);
    await this.readInto(out, 0, length, position, what);
    return out;
  }

  /** Fills `into[at, at+length)` from file offset `position`, after the same range check as `read`. */
  async readInto(into: Buffer, at: number, length: number, position: number, what: string): Promise<void> {
    this.checkRange(position, length, what);
    let done = 0;
    while (done < length) {
      let n: number;
      try {
        n = await this.readAt(this.fh, into, at + done, length - done, position + done);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException)?.code ?? String(err);
        throw this.error('TRANSPORT_READ_FAILED', `reading ${what} at file offset ${position + done} of ${this.path} failed: ${code}`, err);
      }
      // The size was taken at open; a file that ends early has changed under the snapshot.
      if (n === 0) throw this.error('TRANSPORT_READ_FAILED', `${this.path} ends at file offset ${position + done}, inside ${what}`);
      done += n;
    }
  }

  /** Throws unless `[position, position+length)` lies inside the file. */
  checkRange(position: number, length: number, what: string): void {
    const valid = Number.isSafeInteger(position) && Number.isSafeInteger(length) && position >= 0 && length >= 0;
    if (!valid || position + length > this.size) {
      throw this.corrupt(`${what} at file offset ${position} (${length} bytes) lies past the end of the file (${this.size} bytes)`);
    }
  }

  /** Metadata that cannot be right: the image is damaged (or hostile), not merely unsupported. */
  corrupt(detail: string, cause?: unknown): FerryError {
    return this.error('TRANSPORT_READ_FAILED', `corrupt qcow2 image ${this.path}: ${detail}`, cause);
  }

  /** A feature this reader refuses rather than guess at. */
  unsupported(feature: string): FerryError {
    return this.error('TRANSPORT_UNSUPPORTED_FORMAT', `${this.path} uses ${feature}, which hot-add cannot read`);
  }

  error(code: ErrorCode, detail: string, cause?: unknown): FerryError {
    return new FerryError(code, detail, { disk: this.diskName, file: this.path }, { cause });
  }

  close(): Promise<void> {
    return this.fh.close();
  }
}
