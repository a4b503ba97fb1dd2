import type { DiscoveryOptions } from '../plugins/discovery.js';
import { maxEncodedLength, type BlockCodec, type BlockSlot, type SlotWork } from '../repository/block-codec.js';
import type { BlockTask } from './block-worker.js';
import { WorkerPool } from './worker-pool.js';

/**
 * Runs hashing, compression, decompression and verification on a pool of worker threads (one per
 * core by default). Block memory moves to the worker and back without copies when the buffer owns
 * its memory; otherwise it is copied once.
 */
export class WorkerBlockCodec implements BlockCodec {
  private readonly pool: WorkerPool<BlockTask, unknown>;
  private readonly freeSlots: BlockSlot[] = [];
  private slotCount = 0;

  /** `idKey`: the block-id key of an encrypted repository (ids are then HMAC-SHA256). */
  constructor(discovery: DiscoveryOptions, threads?: number, idKey?: Uint8Array) {
    this.pool = new WorkerPool(new URL('./block-worker.js', import.meta.url), idKey ? { ...discovery, idKey } : discovery, threads);
  }

  get threads(): number {
    return this.pool.size;
  }

  /** Thread time spent on blocks so far, summed over the threads. */
  get busyMs(): number {
    return this.pool.busyMs;
  }

  async encode(block: Buffer, compressor: string, level: number): Promise<{ hash: Buffer; encoded: Buffer }> {
    const data = movable(block);
    const r = (await this.pool.run({ op: 'encode', block: data, compressor, level }, [data.buffer as ArrayBuffer])) as {
      hash: Uint8Array;
      encoded: Uint8Array;
    };
    return { hash: asBuffer(r.hash), encoded: asBuffer(r.encoded) };
  }

  async decode(encoded: Uint8Array, hash: Uint8Array, object: string): Promise<Buffer> {
    const data = movable(encoded);
    const r = (await this.pool.run({ op: 'decode', encoded: data, hash, object }, [data.buffer as ArrayBuffer])) as { raw: Uint8Array };
    return asBuffer(r.raw);
  }

  close(): Promise<void> {
    return this.pool.close();
  }

  /**
   * A free slot of at least `length` bytes, or a new one: two SharedArrayBuffers announced to every
   * thread once (messages to a thread arrive in order, so before any task names the slot). A session
   * uses about as many slots as it has blocks in flight.
   */
  takeSlot(length: number): BlockSlot {
    const i = this.freeSlots.findIndex((s) => s.raw.length >= length);
    if (i >= 0) return this.freeSlots.splice(i, 1)[0];
    const raw = new SharedArrayBuffer(length);
    const out = new SharedArrayBuffer(maxEncodedLength(length));
    const id = ++this.slotCount;
    this.pool.broadcast({ op: 'slot', slot: id, raw, out });
    return { id, raw: Buffer.from(raw), out: Buffer.from(out) };
  }

  giveSlot(slot: BlockSlot): void {
    this.freeSlots.push(slot);
  }

  async encodeSlot(slot: BlockSlot, length: number, work: SlotWork, compressor: string, level: number): Promise<{ hash?: Buffer; encodedLength?: number }> {
    const r = (await this.pool.run({ op: 'slot-encode', slot: slot.id, length, work, compressor, level })) as { hash?: Uint8Array; encodedLength?: number };
    return { hash: r.hash && asBuffer(r.hash), encodedLength: r.encodedLength };
  }

  async decodeSlot(encoded: Uint8Array, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number> {
    const data = movable(encoded);
    const r = (await this.pool.run({ op: 'slot-decode', encoded: data, hash, object, slot: slot.id }, [data.buffer as ArrayBuffer])) as { rawLength: number };
    return r.rawLength;
  }
}

/** A view that owns its whole ArrayBuffer (so it can be transferred), copying only when needed. */
function movable(b: Uint8Array): Uint8Array {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b;
  return new Uint8Array(b);
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
