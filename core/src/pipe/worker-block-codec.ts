import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { DiscoveryOptions, DiscoveryResult } from '../plugins/discovery.js';
import { maxEncodedLength, type BlockCodec, type BlockSlot, type FileRange, type SlotOptions, type SlotRead, type SlotReadResult, type SlotWork } from '../repository/block-codec.js';
import { AlignedArena } from '../util/aligned-memory.js';
import type { Compressor } from '../contracts/compressor.js';
import { BlockTasks, type BlockTask } from './block-tasks.js';
import { WorkerPool } from './worker-pool.js';
import { newSeenTable, noteSeen } from './seen-hashes.js';
import type { CompressorPlugin } from './worker-compressors.js';

/** How block workers find compressors: the discovery options, and what the job's host found. */
export type WorkerPlugins = DiscoveryOptions & { compressorPlugins?: CompressorPlugin[] };

/**
 * `WorkerPlugins` from a plugin host (its options and discovery result): the packages that provide
 * compressors go to the workers, which import them directly instead of discovering plugins again.
 */
export function workerPlugins(host: { options: DiscoveryOptions; discovery: DiscoveryResult }): WorkerPlugins {
  const compressorPlugins = host.discovery.plugins
    .filter((p) => (p.manifest.provides.compressor ?? []).length > 0)
    .map((p) => ({
      plugin: p.packageName,
      entry: pathToFileURL(path.resolve(p.dir, p.manifest.entry)).href,
      declares: Object.entries(p.manifest.provides).flatMap(([kind, names]) => (names ?? []).map((n) => `${kind}:${n}`)),
    }));
  return { ...host.options, compressorPlugins };
}

/**
 * Work the calling thread does itself before any worker thread starts: a thread costs ~0.2 core-s
 * to start (bootstrap, plugin discovery), more than hashing and compressing a few MiB, so a small
 * job (a 1 MiB disk, a few changed blocks) never starts one. Past the budget every task goes to
 * the threads.
 */
export interface InlineStart {
  /** A compressor by name on the calling thread (as the workers build them). */
  compressor: (name: string) => Promise<Compressor>;
  /** Block bytes (raw for encoding, stored for decoding) handled here before the threads take over. */
  bytes: number;
}

/** The inline budget a job's codec gets (`JobRuntime.codec`). */
export const INLINE_CODEC_BYTES = 4 * 1024 * 1024;

/**
 * Work known to be this small in all (`expectWork`: an incremental's changed blocks, a small disk)
 * runs wholly on the calling thread: 48 MiB is ~0.1-0.2 s of hashing and LZ4 on one core, less than
 * starting two threads costs (~0.2 core-s each, ~0.2 s before the first answers)...
 */
export const INLINE_PLANNED_BYTES = 48 * 1024 * 1024;
/**
 * ...as long as the rest of it, at the rate this thread managed on the start budget, takes no
 * longer than this: a slow codec (zstd at a high level) goes to the threads after the start budget.
 */
export const INLINE_PLANNED_MS = 250;

/**
 * Runs hashing, compression, decompression and verification on a pool of worker threads (one per
 * core by default). Block memory moves to the worker and back without copies when the buffer owns
 * its memory; otherwise it is copied once.
 */
export class WorkerBlockCodec implements BlockCodec {
  private readonly pool: WorkerPool<BlockTask, unknown>;
  private readonly freeSlots: BlockSlot[] = [];
  private slotCount = 0;
  private arena?: AlignedArena;
  private readonly inline?: BlockTasks;
  private inlineStart = 0;
  private inlineBudget = 0;
  private inlineUsed = 0;
  private inlineBusyMs = 0;
  /** Bytes announced by `expectWork` so far. */
  private planned = 0;
  /** A task went to the threads: every later one does too. */
  private threaded = false;
  /** Ids met so far (`noteSeen`), shared with the threads once the first is noted. */
  private seen?: Uint8Array;

  /**
   * `idKey`: the block-id key of an encrypted repository (ids are then HMAC-SHA256). `inline`: the
   * first tasks run on the calling thread, and the first worker starts with the first task past it.
   */
  constructor(discovery: WorkerPlugins, threads?: number, idKey?: Uint8Array, inline?: InlineStart) {
    this.pool = new WorkerPool(new URL('./block-worker.js', import.meta.url), idKey ? { ...discovery, idKey } : discovery, threads, inline ? 0 : 1);
    if (inline) {
      this.inline = new BlockTasks(inline.compressor, idKey);
      this.inlineStart = this.inlineBudget = inline.bytes;
    }
  }

  /** Threads that worked on blocks: the workers started, or the calling thread alone. */
  get threads(): number {
    return Math.max(1, this.pool.size);
  }

  /** Starts every worker thread now instead of as work arrives (`WorkerPool.startAll`). */
  startThreads(): void {
    this.pool.startAll();
  }

  /** Worker threads started so far. */
  get workerThreads(): number {
    return this.pool.size;
  }

  /** Thread time spent on blocks so far, summed over the threads (the calling thread's share included). */
  get busyMs(): number {
    return this.pool.busyMs + this.inlineBusyMs;
  }

  /**
   * While everything announced fits in `INLINE_PLANNED_BYTES`, the calling thread's budget covers it;
   * past that the budget is the inline start again, so large work reaches the threads at once.
   */
  expectWork(bytes: number): void {
    if (!this.inline || this.threaded || !(bytes > 0)) return;
    this.planned += bytes;
    this.inlineBudget = this.planned <= INLINE_PLANNED_BYTES ? Math.max(this.inlineStart, this.planned) : this.inlineStart;
  }

  /** Within the start budget always; past it, while the announced rest fits `INLINE_PLANNED_MS` at the measured rate. */
  private inlineKeepsUp(): boolean {
    if (this.inlineUsed < this.inlineStart || this.inlineUsed === 0) return true;
    return (this.inlineBusyMs / this.inlineUsed) * (this.inlineBudget - this.inlineUsed) <= INLINE_PLANNED_MS;
  }

  private run(task: BlockTask, bytes: number, transfer: ArrayBuffer[] = []): Promise<unknown> {
    if (this.inline && !this.threaded && this.inlineUsed + bytes <= this.inlineBudget && this.inlineKeepsUp()) {
      this.inlineUsed += bytes;
      const t0 = performance.now();
      return this.inline.handle(task).then(({ result }) => {
        this.inlineBusyMs += performance.now() - t0 - ((result as { readMs?: number }).readMs ?? 0);
        return result;
      });
    }
    this.threaded = true; // past the budget: the threads from here on
    return this.pool.run(task, transfer);
  }

  async encode(block: Buffer, compressor: string, level: number): Promise<{ hash: Buffer; encoded: Buffer }> {
    const data = movable(block);
    const r = (await this.run({ op: 'encode', block: data, compressor, level }, data.length, [data.buffer as ArrayBuffer])) as {
      hash: Uint8Array;
      encoded: Uint8Array;
    };
    return { hash: asBuffer(r.hash), encoded: asBuffer(r.encoded) };
  }

  async decode(encoded: Uint8Array, hash: Uint8Array, object: string): Promise<Buffer> {
    const data = movable(encoded);
    const r = (await this.run({ op: 'decode', encoded: data, hash: ownHash(hash), object }, data.length, [data.buffer as ArrayBuffer])) as { raw: Uint8Array };
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
  takeSlot(length: number, opts: SlotOptions = {}): BlockSlot {
    const aligned = Boolean(opts.aligned);
    const i = this.freeSlots.findIndex((s) => s.raw.length >= length && Boolean(s.aligned) === aligned);
    if (i >= 0) return this.freeSlots.splice(i, 1)[0];
    // `aligned`: page-aligned memory from the arena (a view of its shared memory), for direct writes.
    const raw = aligned ? (this.arena ??= new AlignedArena()).take(length).view : new SharedArrayBuffer(length);
    const out = new SharedArrayBuffer(maxEncodedLength(length));
    const id = ++this.slotCount;
    this.pool.broadcast({ op: 'slot', slot: id, raw, out });
    this.inline?.announce({ op: 'slot', slot: id, raw, out });
    const rawBuf = raw instanceof SharedArrayBuffer ? Buffer.from(raw) : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    return { id, raw: rawBuf, out: Buffer.from(out), ...(aligned && { aligned }) };
  }

  giveSlot(slot: BlockSlot): void {
    this.freeSlots.push(slot);
  }

  async encodeSlot(slot: BlockSlot, length: number, work: SlotWork, compressor: string, level: number): Promise<{ hash?: Buffer; encodedLength?: number; seen?: boolean }> {
    const r = (await this.run({ op: 'slot-encode', slot: slot.id, length, work, compressor, level }, length)) as { hash?: Uint8Array; encodedLength?: number; seen?: boolean };
    return { hash: r.hash && asBuffer(r.hash), encodedLength: r.encodedLength, seen: r.seen };
  }

  /** The table is announced like a slot, so every task sent after the first note sees it. */
  noteSeen(hash: Uint8Array): void {
    if (!this.seen) {
      const table = newSeenTable();
      const task = { op: 'seen', table } as const;
      this.pool.broadcast(task);
      this.inline?.announce(task);
      this.seen = new Uint8Array(table);
    }
    noteSeen(this.seen, hash);
  }

  async readSlot(slot: BlockSlot, length: number, read: SlotRead, work: SlotWork, compressor: string, level: number): Promise<SlotReadResult> {
    const r = (await this.run({ op: 'slot-read', slot: slot.id, length, read, work, compressor, level }, length)) as Omit<SlotReadResult, 'hash'> & { hash?: Uint8Array };
    return { zero: r.zero, seen: r.seen, hash: r.hash && asBuffer(r.hash), encodedLength: r.encodedLength, readMs: r.readMs };
  }

  async readDecodeSlot(range: FileRange, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number> {
    const task = { op: 'slot-read-decode', range, hash: ownHash(hash), object, slot: slot.id } as const;
    return ((await this.run(task, range.length)) as { rawLength: number }).rawLength;
  }

  async decodeSlot(encoded: Uint8Array, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number> {
    if (encoded.buffer === slot.out.buffer && encoded.byteOffset === slot.out.byteOffset) {
      // Read into the slot's shared `out` already (BlockStore.read): nothing to move.
      const task = { op: 'slot-decode', encodedLength: encoded.length, hash: ownHash(hash), object, slot: slot.id } as const;
      return ((await this.run(task, encoded.length)) as { rawLength: number }).rawLength;
    }
    // Other shared memory is seen by the thread as it is: no copy, nothing to transfer.
    const shared = encoded.buffer instanceof SharedArrayBuffer;
    const data = shared ? encoded : movable(encoded);
    const r = (await this.run({ op: 'slot-decode', encoded: data, hash: ownHash(hash), object, slot: slot.id }, data.length, shared ? [] : [data.buffer as ArrayBuffer])) as {
      rawLength: number;
    };
    return r.rawLength;
  }
}

/** A view that owns its whole ArrayBuffer (so it can be transferred), copying only when needed. */
function movable(b: Uint8Array): Uint8Array {
  if (b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer) return b;
  return new Uint8Array(b);
}

/**
 * The 32 bytes of a block id in memory of their own: a message clones a view's whole ArrayBuffer,
 * and a restore's ids are views of the block map (2 MiB for a 64 GiB disk) — cloned for every block.
 */
function ownHash(hash: Uint8Array): Uint8Array {
  return hash.byteOffset === 0 && hash.byteLength === hash.buffer.byteLength ? hash : new Uint8Array(hash);
}

function asBuffer(u: Uint8Array): Buffer {
  return Buffer.from(u.buffer, u.byteOffset, u.byteLength);
}
