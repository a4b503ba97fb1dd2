import type { promises as fs } from 'node:fs';
import { ALIGNMENT, AlignedArena } from '@ferry/core/plugin';

/** Bytes of one staging buffer; each object being written uses two (one filling, one being written). */
export const STAGE_BYTES = 2 * 1024 * 1024;

/** Page-aligned staging buffers, pooled (arena pieces are never given back). */
export class StagePool {
  private readonly arena = new AlignedArena();
  private readonly free: Buffer[] = [];

  take(): Buffer | undefined {
    const b = this.free.pop();
    if (b) return b;
    const { view, aligned } = this.arena.take(STAGE_BYTES);
    return aligned ? Buffer.from(view.buffer, view.byteOffset, view.length) : undefined;
  }

  give(b: Buffer): void {
    this.free.push(b);
  }
}

/**
 * Writes an object appended front to back through a second descriptor of its file opened with
 * `O_DIRECT`: appended bytes are copied into page-aligned staging buffers, and each full buffer is
 * written to the device from there, without the kernel copying it into the page cache and writing
 * it back later. The last partial page, and every write that does not append (a gap or an earlier
 * offset), go through the normal descriptor; the first EINVAL (a file system or buffer that does
 * not allow direct writes) calls `onUnsupported` and sends the rest through it too. Durability is
 * the caller's as before: `finish` only puts every byte in the file; the caller fsyncs `fh`.
 */
export class StagedDirectWriter {
  /** Bytes written to the file through `direct` (whole buffers, so a multiple of the page size). */
  private written = 0;
  /** Whether appended bytes still go through `direct` (false after EINVAL or a write that does not append). */
  private useDirect: boolean;
  private fill: Buffer | undefined;
  private spare: Buffer | undefined;
  private staged = 0;
  /** The direct write of the previous full buffer; its failure is kept in `failure`. */
  private pending: Promise<void> | undefined;
  private failure: unknown;
  /** Serialises writes: each waits for the ones before it. */
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private readonly fh: fs.FileHandle,
    private direct: fs.FileHandle | undefined,
    private readonly pool: StagePool,
    private readonly onUnsupported: () => void,
  ) {
    this.fill = direct && pool.take();
    this.spare = this.fill && pool.take();
    this.useDirect = Boolean(this.spare);
  }

  /** Whether the bytes appended so far went through the direct descriptor. */
  get directWrites(): boolean {
    return this.useDirect;
  }

  write(data: Uint8Array, offset: number): Promise<void> {
    const run = this.chain.then(() => this.writeNow(data, offset));
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Puts every byte written in the file (the caller fsyncs `fh`); releases the direct descriptor and buffers. */
  async finish(): Promise<void> {
    await this.chain;
    await this.settle();
    if (this.staged > 0) {
      const whole = this.staged - (this.staged % ALIGNMENT);
      if (whole > 0) await this.writeDirect(this.fill!, whole);
      // The last partial page through the normal descriptor.
      await writeAll(this.fh, this.fill!.subarray(whole, this.staged), this.written);
      this.written += this.staged - whole;
      this.staged = 0;
    }
    await this.release();
  }

  /** Releases the direct descriptor and buffers; staged bytes not yet written are dropped. Never throws. */
  async close(): Promise<void> {
    await this.chain;
    await this.pending?.catch(() => undefined);
    this.pending = undefined;
    this.staged = 0;
    await this.release();
  }

  private async writeNow(data: Uint8Array, offset: number): Promise<void> {
    if (this.failure) throw this.failure;
    let pos = 0;
    while (this.useDirect && offset === this.written + this.staged && pos < data.length) {
      const n = Math.min(data.length - pos, STAGE_BYTES - this.staged);
      // Not `set`: V8 copies into or out of shared memory with relaxed atomics, byte by byte where
      // the two addresses are not equally aligned (records have any length): 4x memcpy's CPU.
      // `Buffer.fill` with a buffer as its value is one memcpy of it.
      this.fill!.fill(data.subarray(pos, pos + n), this.staged, this.staged + n);
      this.staged += n;
      pos += n;
      offset += n;
      if (this.staged < STAGE_BYTES) continue;
      // Full: written in the background while the other buffer fills; its failure surfaces later.
      await this.settle();
      const full = this.fill!;
      this.fill = this.spare;
      this.spare = full;
      this.staged = 0;
      this.pending = this.writeDirect(full, STAGE_BYTES).catch((err) => {
        this.failure ??= err;
      });
    }
    if (pos === data.length) return;
    await this.unstage();
    await writeAll(this.fh, data.subarray(pos), offset);
  }

  /** Waits for the direct write in flight; throws its failure. */
  private async settle(): Promise<void> {
    await this.pending;
    this.pending = undefined;
    if (this.failure) throw this.failure;
  }

  /**
   * Writes `buf[0, length)` at the end of what is written, directly; on EINVAL through `fh`, and
   * direct writes stop (for this object, and through `onUnsupported` for the backend).
   */
  private async writeDirect(buf: Uint8Array, length: number): Promise<void> {
    const at = this.written;
    this.written += length;
    if (this.useDirect) {
      try {
        for (let done = 0; done < length; ) done += (await this.direct!.write(buf, done, length - done, at + done)).bytesWritten;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
        this.useDirect = false;
        this.onUnsupported();
      }
    }
    await writeAll(this.fh, buf.subarray(0, length), at);
  }

  /** Writes what is staged through `fh`; the rest of the object goes through it too. */
  private async unstage(): Promise<void> {
    await this.settle();
    this.useDirect = false;
    if (this.staged > 0) {
      await writeAll(this.fh, this.fill!.subarray(0, this.staged), this.written);
      this.written += this.staged;
      this.staged = 0;
    }
    await this.release();
  }

  private async release(): Promise<void> {
    this.useDirect = false;
    if (this.fill) this.pool.give(this.fill);
    if (this.spare) this.pool.give(this.spare);
    this.fill = this.spare = undefined;
    const d = this.direct;
    this.direct = undefined;
    await d?.close().catch(() => undefined);
  }
}

async function writeAll(fh: fs.FileHandle, data: Uint8Array, offset: number): Promise<void> {
  for (let done = 0; done < data.length; ) done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
}
