import { FerryError, type ErrorLocation } from '../errors.js';
import type { BlockMap } from '../repository/block-map.js';
import { BlockCache } from './block-cache.js';
import { pushAllocation, type Allocation, type DiskImage } from './disk-image.js';

/** Where a reader's blocks come from: the repository in this process, or a repository service. */
export interface BlockSource {
  /** The raw block whose id is `hash`, decoded and checked (CRC-32 of the object, id against the map). */
  read(hash: Buffer, where: ErrorLocation): Promise<Buffer>;
  /** Releases what the source holds for this reader (nothing for a shared source). Never throws. */
  close(): Promise<void>;
}

export interface PointReaderOptions {
  /** Bytes of decoded blocks kept (LRU; default `DEFAULT_CACHE_BYTES`). */
  cacheBytes?: number;
  /** Blocks fetched at once, over all callers (default 8). */
  concurrency?: number;
  /** Data blocks fetched ahead of a sequential reader (default 8; 0 turns it off). */
  readAhead?: number;
}

export const DEFAULT_CACHE_BYTES = 64 * 1024 * 1024;

export interface PointReaderFigures {
  /** Blocks read from the repository (each decoded and checked once per fetch). */
  blocksFetched: number;
  bytesFetched: number;
  cacheHits: number;
  cacheMisses: number;
  cacheBytes: number;
}

/**
 * One disk of a restore point, read at any offset (`DiskImage`): blocks are fetched from the
 * repository on demand through a bounded LRU cache, each checked as a restore checks it (CRC-32 of
 * the stored object, content against the block id the map names, length against the map); zero
 * blocks are zeros without a repository read. A sequential reader gets the next data blocks fetched
 * ahead. Safe for many concurrent callers; the repository is never written.
 */
export class PointReader implements DiskImage {
  private readonly cache: BlockCache;
  private readonly concurrency: number;
  private readonly readAhead: number;
  private running = 0;
  private readonly queue: (() => void)[] = [];
  /** The block after the end of the last read: a read starting there is sequential. */
  private nextSequential = -1;
  private closed = false;
  private blocksFetched = 0;
  private bytesFetched = 0;

  constructor(
    /** The restore point, VM and disk served. */
    readonly point: { vm: string; disk: string; id: string },
    readonly map: BlockMap,
    private readonly source: BlockSource,
    opts: PointReaderOptions = {},
  ) {
    this.cache = new BlockCache(opts.cacheBytes ?? DEFAULT_CACHE_BYTES);
    this.concurrency = Math.max(1, opts.concurrency ?? 8);
    this.readAhead = Math.max(0, opts.readAhead ?? 8);
  }

  get size(): number {
    return this.map.diskSize;
  }

  get blockSize(): number {
    return this.map.blockSize;
  }

  get figures(): PointReaderFigures {
    return { blocksFetched: this.blocksFetched, bytesFetched: this.bytesFetched, cacheHits: this.cache.hits, cacheMisses: this.cache.misses, cacheBytes: this.cache.size };
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length, this.where());
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const bs = this.map.blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const sequential = first === this.nextSequential || first === this.nextSequential - 1;
    this.nextSequential = last + 1;
    const copies: Promise<void>[] = [];
    for (let i = first; i <= last; i++) {
      const hash = this.map.get(i);
      if (!hash) continue; // a zero block: `out` is zeros already
      copies.push(
        this.block(i, hash).then((data) => {
          const start = Math.max(offset, i * bs);
          const end = Math.min(offset + length, i * bs + data.length);
          data.copy(out, start - offset, start - i * bs, end - i * bs);
        }),
      );
    }
    if (sequential) this.prefetch(last + 1);
    await Promise.all(copies);
    return out;
  }

  allocation(offset: number, length: number): Allocation[] {
    const out: Allocation[] = [];
    const end = Math.min(this.size, offset + length);
    const bs = this.map.blockSize;
    for (let pos = offset; pos < end; ) {
      const i = Math.floor(pos / bs);
      const next = Math.min(end, (i + 1) * bs);
      pushAllocation(out, pos, next - pos, !this.map.get(i));
      pos = next;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.source.close();
  }

  /** Block `i` (id `hash`), from the cache or fetched, checked, and of the length the map says. */
  private block(i: number, hash: Buffer): Promise<Buffer> {
    return this.cache.get(hash.toString('hex'), () => this.fetch(i, hash));
  }

  private async fetch(i: number, hash: Buffer): Promise<Buffer> {
    if (this.closed) throw new FerryError('PIPE_CLOSED', 'the restore point reader was closed', this.where());
    await this.slot();
    try {
      const where = this.where(i * this.map.blockSize);
      const data = await this.source.read(hash, where);
      const expected = this.map.lengthOf(i);
      if (data.length !== expected) {
        throw new FerryError('REPO_CORRUPT_OBJECT', `block holds ${data.length} bytes, the map expects ${expected}`, where);
      }
      this.blocksFetched++;
      this.bytesFetched += data.length;
      return data;
    } finally {
      this.release();
    }
  }

  /** Fetches the next data blocks a sequential reader will ask for, while fetch slots are free. */
  private prefetch(from: number): void {
    for (let i = from, n = 0; i < this.map.blockCount && n < this.readAhead; i++) {
      const hash = this.map.get(i);
      if (!hash) continue;
      n++;
      if (this.cache.has(hash.toString('hex'))) continue;
      if (this.running + this.queue.length >= this.concurrency) return;
      // A failed read-ahead is not cached: the real read fetches again and reports the error.
      this.block(i, hash).catch(() => undefined);
    }
  }

  private async slot(): Promise<void> {
    if (this.running < this.concurrency) {
      this.running++;
      return;
    }
    await new Promise<void>((resolve) => this.queue.push(resolve));
  }

  private release(): void {
    const next = this.queue.shift();
    if (next) next();
    else this.running--;
  }

  private where(offset?: number): ErrorLocation {
    return { vm: this.point.vm, disk: this.point.disk, ...(offset === undefined ? {} : { offset }) };
  }
}

/** READ_OUT_OF_RANGE unless [offset, offset+length) lies within the image. */
export function checkRange(image: { size: number }, offset: number, length: number, where: ErrorLocation = {}): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > image.size) {
    throw new FerryError('READ_OUT_OF_RANGE', `a read of ${length} bytes at offset ${offset} of a disk of ${image.size} bytes`, where);
  }
}
