import { FerryError, type AllocationExtent, type DiskHandle, type Extent } from '@ferry/core/plugin';
import type { NbdClient } from './nbd-client.js';
import { BASE_ALLOCATION, NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO } from './nbd-protocol.js';

/**
 * Upper bound on block status round trips for one `changedBlocks` call. Every answer advances by at
 * least one descriptor, so only a server answering a byte at a time could reach it.
 */
const MAX_STATUS_ROUNDS = 1_000_000;

/**
 * A disk read through an NBD export. Reads go straight to the client (several in flight, split at
 * the server's maximum request size). `blockStatus` exists when the server agreed to
 * `base:allocation`, `changedBlocks` when the transport opened it with a dirty bitmap context.
 */
export class NbdDiskHandle implements DiskHandle {
  readonly size: number;
  readonly blockStatus?: (offset: number, length: number) => Promise<AllocationExtent[]>;
  readonly changedBlocks?: (offset: number, length: number) => Promise<Extent[]>;

  private next = 0;

  /**
   * `client` answers block status; reads spread over `client` and `readers` (extra connections to
   * the same export, for servers that allow several), one after the other.
   */
  constructor(
    private readonly client: NbdClient,
    private readonly diskName: string,
    bitmapContext: string | undefined,
    private readonly readers: NbdClient[] = [],
  ) {
    this.size = client.size;
    if (client.metaContexts.has(BASE_ALLOCATION)) this.blockStatus = (o, l) => this.guard(this.allocation(o, l));
    if (bitmapContext) this.changedBlocks = (o, l) => this.guard(this.dirty(bitmapContext, o, l));
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.guard(this.reader().read(offset, length));
  }

  readInto(offset: number, into: Uint8Array): Promise<void> {
    return this.guard(this.reader().readInto(offset, into));
  }

  /** The connection for the next read: the client and the extra readers in turn. */
  private reader(): NbdClient {
    const n = this.next++ % (this.readers.length + 1);
    return n === 0 ? this.client : this.readers[n - 1];
  }

  async close(): Promise<void> {
    await Promise.all([this.client, ...this.readers].map((c) => c.close()));
  }

  /** Holes and zero ranges are `zero` (the contract counts holes as zero); everything else is data. */
  private async allocation(offset: number, length: number): Promise<AllocationExtent[]> {
    const status = await this.client.blockStatus(offset, length);
    const out: AllocationExtent[] = [];
    for (const e of status.get(BASE_ALLOCATION)!) {
      const kind = e.flags & (NBD_STATE_HOLE | NBD_STATE_ZERO) ? 'zero' : 'data';
      const last = out.at(-1);
      if (last && last.kind === kind) last.length += e.length;
      else out.push({ offset: e.offset, length: e.length, kind });
    }
    return out;
  }

  /** The dirty ranges of the whole asked range, in order; asks again where a reply stops short. */
  private async dirty(context: string, offset: number, length: number): Promise<Extent[]> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new FerryError('TRANSPORT_READ_FAILED', `changed blocks of ${length} bytes at ${offset} is not a valid range`, { offset });
    }
    const end = Math.min(offset + length, this.size);
    const out: Extent[] = [];
    let pos = offset;
    for (let round = 0; pos < end; round++) {
      if (round >= MAX_STATUS_ROUNDS) throw new FerryError('TRANSPORT_READ_FAILED', `dirty bitmap ${context} did not cover the range`, { offset: pos });
      const extents = (await this.client.blockStatus(pos, end - pos)).get(context)!;
      for (const e of extents) {
        if (!(e.flags & NBD_STATE_DIRTY)) continue;
        const last = out.at(-1);
        if (last && last.offset + last.length === e.offset) last.length += e.length;
        else out.push({ offset: e.offset, length: e.length });
      }
      const last = extents.at(-1)!;
      pos = last.offset + last.length;
    }
    return out;
  }

  private async guard<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (err) {
      if (err instanceof FerryError) throw err.at({ disk: this.diskName });
      throw err;
    }
  }
}
