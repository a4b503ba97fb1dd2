import { open } from 'node:fs/promises';
import { FerryError } from '../errors.js';

/**
 * Reads `length` bytes at byte `offset` of a disk (or of a partition, a file system volume). It must
 * resolve to exactly `length` bytes when the range lies inside the disk; the parsers in this folder
 * check every range against the disk size before asking, so a reader need not handle reads past the end.
 * The bytes may be a view of memory the reader keeps (a cache, a block buffer): the parsers never
 * change them.
 */
export type DiskReader = (offset: number, length: number) => Promise<Uint8Array>;

/** Names the structure being read in errors (`GPT header`, `NTFS boot sector`, ...). */
export async function readExactly(read: DiskReader, offset: number, length: number, what: string): Promise<Uint8Array> {
  const bytes = await read(offset, length);
  if (bytes.length !== length) {
    throw new FerryError('DISK_FORMAT_INVALID', `${what}: the disk returned ${bytes.length} of ${length} bytes`, { offset });
  }
  return bytes;
}

/** A reader that sees `base`'s bytes from `start` on: the first byte of a partition becomes offset 0. */
export function sliceReader(base: DiskReader, start: number): DiskReader {
  return (offset, length) => base(start + offset, length);
}

/** A reader over a file or block device, and its size; `close` releases the descriptor. */
export async function openFileReader(file: string): Promise<{ read: DiskReader; size: number; close: () => Promise<void> }> {
  const handle = await open(file, 'r');
  const stat = await handle.stat();
  let size = stat.size;
  if (stat.isBlockDevice()) {
    // A block device's stat size is 0; its end is where seeking finds it.
    size = 0;
    for (let step = 2 ** 52; step >= 512; step /= 2) {
      const { bytesRead } = await handle.read(Buffer.alloc(1), 0, 1, size + step - 1);
      if (bytesRead === 1) size += step;
    }
  }
  const read: DiskReader = async (offset, length) => {
    const buf = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await handle.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) break;
      done += bytesRead;
    }
    return done === length ? buf : buf.subarray(0, done);
  };
  return { read, size, close: () => handle.close() };
}
