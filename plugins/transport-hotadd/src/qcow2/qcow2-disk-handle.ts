import { FerryError, type AllocationExtent, type DiskHandle } from '@ferry/core/plugin';
import type { ImageFile } from './image-file.js';
import { Qcow2Layer, RawLayer, type ImageLayer } from './image-layer.js';

/** Bounds one block status reply; the caller asks again for the remainder. */
const MAX_EXTENTS = 1024;
/** Bounds the metadata walked for one reply, for images fragmented into tiny runs. */
const MAX_RUNS = 16384;

/**
 * An open qcow2 image with its backing chain. Reads assemble guest bytes from clusters, backing
 * files and zeros; block status comes from the L1/L2 tables alone. Caches are shared by every read in
 * flight; nothing else is mutable, so reads may overlap freely.
 */
export class Qcow2DiskHandle implements DiskHandle {
  private closed = false;

  constructor(
    private readonly top: Qcow2Layer,
    private readonly files: ImageFile[],
    private readonly diskName: string,
  ) {}

  get size(): number {
    return this.top.size;
  }

  /** For the probe's reason: `qcow2`, `qcow2, backing chain of 3`, plus anything the report should say. */
  describe(): string {
    const parts = [this.files.length > 1 ? `qcow2, backing chain of ${this.files.length}` : 'qcow2'];
    const dirty = this.layers().filter((l) => l instanceof Qcow2Layer && l.notes.dirty);
    for (const l of dirty) parts.push(`${l.file.path} has its dirty bit set (left open for writing; its refcounts are not needed to read it)`);
    const blind = this.layers().filter((l) => l instanceof RawLayer && !l.findsHoles);
    for (const l of blind) parts.push(`holes of the raw backing file ${l.file.path} are read as data (ferry_seek addon not loaded)`);
    return parts.join('; ');
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    if (!isRange(offset, length) || offset + length > this.size) {
      throw this.failure(`read of ${length} bytes at ${offset} is outside the disk (${this.size} bytes)`, offset);
    }
    const out = Buffer.alloc(length);
    if (length > 0) await this.guard(offset, () => this.top.readInto(out, offset));
    return out;
  }

  async readInto(offset: number, into: Uint8Array): Promise<void> {
    const length = into.length;
    if (!isRange(offset, length) || offset + length > this.size) {
      throw this.failure(`read of ${length} bytes at ${offset} is outside the disk (${this.size} bytes)`, offset);
    }
    // Every byte is written: cluster data, zeros for zero and unallocated runs past the backing file.
    const out = Buffer.from(into.buffer, into.byteOffset, into.byteLength);
    if (length > 0) await this.guard(offset, () => this.top.readInto(out, offset));
  }

  async blockStatus(offset: number, length: number): Promise<AllocationExtent[]> {
    // Asking past the end is allowed (the reply stops at the end); asking for nothing is not.
    if (!isRange(offset, length) || length === 0 || offset >= this.size) {
      throw this.failure(`block status of ${length} bytes at ${offset} is outside the disk (${this.size} bytes)`, offset);
    }
    const end = Math.min(this.size, offset + length);
    const out: AllocationExtent[] = [];
    for (let pos = offset, runs = 0; pos < end && runs < MAX_RUNS; runs++) {
      const e = await this.guard(pos, () => this.top.status(pos, end - pos));
      const last = out.at(-1);
      if (last && last.kind === e.kind) last.length += e.length;
      else if (out.length === MAX_EXTENTS) break;
      else out.push({ ...e });
      pos += e.length;
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await Promise.all(this.files.map((f) => f.close().catch(() => undefined)));
  }

  private layers(): ImageLayer[] {
    const out: ImageLayer[] = [];
    for (let l: ImageLayer | undefined = this.top; l; l = l.backing) out.push(l);
    return out;
  }

  /** Adds the guest offset to a coded error and codes anything else as a read failure. */
  private async guard<T>(offset: number, work: () => Promise<T>): Promise<T> {
    try {
      return await work();
    } catch (err) {
      if (err instanceof FerryError) throw err.at({ disk: this.diskName, offset });
      throw this.failure(`reading the qcow2 image failed: ${(err as Error)?.message ?? String(err)}`, offset, err);
    }
  }

  private failure(detail: string, offset: number, cause?: unknown): FerryError {
    return new FerryError('TRANSPORT_READ_FAILED', detail, { disk: this.diskName, offset }, { cause });
  }
}

function isRange(offset: number, length: number): boolean {
  return Number.isSafeInteger(offset) && Number.isSafeInteger(length) && offset >= 0 && length >= 0;
}
