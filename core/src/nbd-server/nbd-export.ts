import type { DiskImage } from '../restore-access/disk-image.js';

/** A disk image that also takes writes (a restore point seen through a writable overlay). */
export interface WritableImage extends DiskImage {
  write(offset: number, data: Uint8Array): Promise<void>;
  /** The range reads as zeros afterwards. */
  writeZeroes(offset: number, length: number): Promise<void>;
  /** The client no longer needs the range: it reads as zeros afterwards (and holds no data). */
  trim(offset: number, length: number): Promise<void>;
  /** Every write that completed before is durable. */
  flush(): Promise<void>;
}

/** One export of an NBD server. */
export interface NbdExport {
  /** The NBD export name clients ask for; the empty name selects the server's first export. */
  name: string;
  description?: string;
  image: DiskImage | WritableImage;
  /** Whether clients may write (the image must be a `WritableImage`). */
  writable: boolean;
}

export function isWritable(e: NbdExport): e is NbdExport & { image: WritableImage } {
  return e.writable && typeof (e.image as WritableImage).write === 'function';
}
