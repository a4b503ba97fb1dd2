import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { pushAllocation, type Allocation, type DiskImage } from '../restore-access/disk-image.js';
import { checkRange } from '../restore-access/point-reader.js';
import type { WritableImage } from '../nbd-server/nbd-export.js';

/** Overlay granularity: a write of part of a chunk copies the rest of it from the point first. */
export const OVERLAY_CHUNK = 4096;
const META = 'overlay.json';
const DATA = 'data';
const CHUNKS = 'chunks';
/** Chunk states in the `chunks` file, one byte per chunk. */
const BASE = 0;
const DATA_STATE = 1;
const ZERO = 2;
/** Bytes of the `chunks` file written back at once: only the pages that changed since the last flush. */
const PAGE = 4096;

export interface OverlayIdentity {
  vm: string;
  disk: string;
  point: string;
}

interface OverlayMeta extends OverlayIdentity {
  format: 'ferry-overlay';
  version: 1;
  sizeBytes: number;
  chunkSize: number;
}

/**
 * A restore point's disk seen through a copy-on-write overlay (`docs/architecture.md`, "Serving
 * restore points"): the folder holds `overlay.json` (which point and disk), `data` (a sparse file of
 * the disk's size: written chunks at their own offsets) and `chunks` (one byte per 4 KiB chunk: 0
 * from the point, 1 in `data`, 2 zeros). Reads take each chunk from where it lives; the point is
 * never written. `flush` makes `data` durable before the chunk states that point into it, so after a
 * crash a chunk reads either its flushed overlay data or what it read before. Writes run one at a
 * time (a partial chunk is a read-modify-write); reads run alongside.
 */
export class OverlayImage implements WritableImage {
  private writing: Promise<void> = Promise.resolve();
  private readonly dirtyPages = new Set<number>();
  /** Chunks not read from the point (written or zeroed): 0 means reads go straight to the point. */
  private changed = 0;
  private closed = false;
  /** Called with each range that changed (a running commit re-copies them). */
  readonly watchers = new Set<(offset: number, length: number) => void>();

  private constructor(
    readonly dir: string,
    readonly base: DiskImage,
    private readonly data: fs.FileHandle,
    private readonly chunksFile: fs.FileHandle,
    private readonly chunks: Uint8Array,
  ) {
    for (const c of chunks) if (c !== BASE) this.changed++;
  }

  get size(): number {
    return this.base.size;
  }

  get blockSize(): number {
    return this.base.blockSize;
  }

  /** Bytes held in the overlay (written or zeroed chunks). */
  get changedBytes(): number {
    return this.changed * OVERLAY_CHUNK;
  }

  /** Opens the overlay in `dir`, creating it when the folder is empty or absent. */
  static async open(dir: string, base: DiskImage, id: OverlayIdentity): Promise<OverlayImage> {
    const where = { vm: id.vm, disk: id.disk, object: dir };
    const fail = (err: unknown, what: string): never => {
      if (err instanceof FerryError) throw err;
      throw new FerryError('SERVE_OVERLAY', `cannot ${what} the overlay folder ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, where, { cause: err });
    };
    await fs.mkdir(dir, { recursive: true, mode: 0o700 }).catch((err) => fail(err, 'create'));
    const count = Math.ceil(base.size / OVERLAY_CHUNK);
    const metaFile = path.join(dir, META);
    const existing = await fs.readFile(metaFile, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? undefined : fail(err, 'read')));
    if (existing === undefined) {
      const entries = await fs.readdir(dir).catch((err) => fail(err, 'list'));
      if (entries.length) throw new FerryError('SERVE_OVERLAY', `${dir} is not empty and holds no overlay (${META}); name an empty or new folder`, where);
      const meta: OverlayMeta = { format: 'ferry-overlay', version: 1, ...id, sizeBytes: base.size, chunkSize: OVERLAY_CHUNK };
      try {
        const d = await fs.open(path.join(dir, DATA), 'wx', 0o600);
        await d.truncate(base.size);
        await d.close();
        const c = await fs.open(path.join(dir, CHUNKS), 'wx', 0o600);
        await c.truncate(count);
        await c.close();
        await fs.writeFile(metaFile, JSON.stringify(meta, null, 2) + '\n', { mode: 0o600 });
      } catch (err) {
        fail(err, 'write');
      }
    } else {
      let meta: OverlayMeta;
      try {
        meta = JSON.parse(existing) as OverlayMeta;
      } catch {
        throw new FerryError('SERVE_OVERLAY', `${metaFile} is not valid JSON`, where);
      }
      if (meta.format !== 'ferry-overlay' || meta.version !== 1 || meta.chunkSize !== OVERLAY_CHUNK) throw new FerryError('SERVE_OVERLAY', `${metaFile} is not a Ferry overlay of version 1`, where);
      if (meta.vm !== id.vm || meta.disk !== id.disk || meta.point !== id.point || meta.sizeBytes !== base.size) {
        throw new FerryError('SERVE_OVERLAY', `${dir} is the overlay of ${meta.vm}/${meta.disk} at restore point ${meta.point}, not of ${id.vm}/${id.disk} at ${id.point}`, where);
      }
    }
    try {
      const data = await fs.open(path.join(dir, DATA), 'r+');
      const chunksFile = await fs.open(path.join(dir, CHUNKS), 'r+');
      const chunks = new Uint8Array(count);
      const { bytesRead } = await chunksFile.read(chunks, 0, count, 0);
      if (bytesRead !== count || (await data.stat()).size !== base.size) throw new FerryError('SERVE_OVERLAY', `the files of the overlay ${dir} do not have the sizes of the disk`, where);
      return new OverlayImage(dir, base, data, chunksFile, chunks);
    } catch (err) {
      return fail(err, 'open');
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this, offset, length);
    if (this.changed === 0) return this.base.read(offset, length);
    const out = Buffer.alloc(length);
    const parts: Promise<void>[] = [];
    this.runs(offset, length, (state, start, end) => {
      if (state === ZERO) return;
      if (state === BASE) parts.push(this.base.read(start, end - start).then((b) => void b.copy(out, start - offset)));
      else parts.push(this.data.read(out, start - offset, end - start, start).then(() => undefined));
    });
    await Promise.all(parts);
    return out;
  }

  allocation(offset: number, length: number): Allocation[] {
    if (this.changed === 0) return this.base.allocation(offset, length);
    const out: Allocation[] = [];
    this.runs(offset, Math.min(length, this.size - offset), (state, start, end) => {
      if (state === BASE) for (const a of this.base.allocation(start, end - start)) pushAllocation(out, a.offset, a.length, a.zero);
      else pushAllocation(out, start, end - start, state === ZERO);
    });
    return out;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    checkRange(this, offset, data.length);
    return this.exclusive(() => this.put(offset, Buffer.from(data.buffer, data.byteOffset, data.byteLength)));
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    checkRange(this, offset, length);
    return this.exclusive(() => this.zero(offset, length));
  }

  /** Trimmed ranges read as zeros, as the spec allows; the point is unchanged. */
  trim(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  flush(): Promise<void> {
    return this.exclusive(() => this.persist());
  }

  /** Runs `fn` with writes held back (a commit's last pass: the view stands still while it copies). */
  exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new FerryError('SERVE_OVERLAY', 'the overlay is closed', { object: this.dir }));
    const run = this.writing.then(fn);
    this.writing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /** Flushes and closes the overlay files (the point's reader is closed by its owner). */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.flush().catch(() => undefined);
    this.closed = true;
    await this.data.close().catch(() => undefined);
    await this.chunksFile.close().catch(() => undefined);
    await this.base.close();
  }

  /** Calls `fn` for each run of chunks of one state within [offset, offset+length), clipped to it. */
  private runs(offset: number, length: number, fn: (state: number, start: number, end: number) => void): void {
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / OVERLAY_CHUNK);
      const state = this.chunks[c]!;
      let next = c + 1;
      while (next * OVERLAY_CHUNK < end && this.chunks[next] === state) next++;
      const stop = Math.min(end, next * OVERLAY_CHUNK);
      fn(state, pos, stop);
      pos = stop;
    }
  }

  private async put(offset: number, data: Buffer): Promise<void> {
    const end = offset + data.length;
    if (data.length === 0) return;
    const first = Math.floor(offset / OVERLAY_CHUNK);
    const last = Math.floor((end - 1) / OVERLAY_CHUNK);
    // Partial chunks at the edges hold other bytes that must stay what they read as now.
    const edge = async (c: number): Promise<void> => {
      const start = c * OVERLAY_CHUNK;
      const stop = Math.min(this.size, start + OVERLAY_CHUNK);
      if ((offset <= start && end >= stop) || this.chunks[c] === DATA_STATE) return;
      const chunk = this.chunks[c] === ZERO ? Buffer.alloc(stop - start) : await this.base.read(start, stop - start);
      await this.pwrite(chunk, start);
      this.mark(c, DATA_STATE);
    };
    await edge(first);
    if (last !== first) await edge(last);
    await this.pwrite(data, offset);
    for (let c = first; c <= last; c++) this.mark(c, DATA_STATE);
    this.notify(offset, data.length);
  }

  private async zero(offset: number, length: number): Promise<void> {
    if (length === 0) return;
    const end = offset + length;
    let pos = offset;
    while (pos < end) {
      const c = Math.floor(pos / OVERLAY_CHUNK);
      const start = c * OVERLAY_CHUNK;
      const stop = Math.min(this.size, start + OVERLAY_CHUNK);
      if (pos === start && end >= stop) {
        this.mark(c, ZERO);
        pos = stop;
      } else {
        const n = Math.min(end, stop) - pos;
        await this.put(pos, Buffer.alloc(n));
        pos += n;
      }
    }
    this.notify(offset, length);
  }

  private async pwrite(buf: Buffer, at: number): Promise<void> {
    for (let done = 0; done < buf.length; ) {
      const { bytesWritten } = await this.data.write(buf, done, buf.length - done, at + done).catch((err: NodeJS.ErrnoException) => {
        throw new FerryError('SERVE_OVERLAY', `cannot write the overlay ${path.join(this.dir, DATA)}: ${err.code}${err.code === 'ENOSPC' ? ' (the disk is full)' : ''}`, {
          object: this.dir,
          offset: at + done,
        });
      });
      done += bytesWritten;
    }
  }

  private mark(c: number, state: number): void {
    const old = this.chunks[c]!;
    if (old === state) return;
    if (old === BASE) this.changed++;
    else if (state === BASE) this.changed--;
    this.chunks[c] = state;
    this.dirtyPages.add(Math.floor(c / PAGE));
  }

  private notify(offset: number, length: number): void {
    for (const w of this.watchers) w(offset, length);
  }

  /** `data` durable first, then the chunk states that point into it. */
  private async persist(): Promise<void> {
    if (this.dirtyPages.size === 0) return;
    try {
      await this.data.datasync();
      const pages = [...this.dirtyPages].sort((a, b) => a - b);
      this.dirtyPages.clear();
      for (const p of pages) {
        const start = p * PAGE;
        const part = this.chunks.subarray(start, Math.min(this.chunks.length, start + PAGE));
        await this.chunksFile.write(part, 0, part.length, start);
      }
      await this.chunksFile.datasync();
    } catch (err) {
      throw new FerryError('SERVE_OVERLAY', `cannot flush the overlay ${this.dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { object: this.dir }, { cause: err });
    }
  }
}
