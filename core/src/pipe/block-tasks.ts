import { readSync } from 'node:fs';
import type { Compressor } from '../contracts/compressor.js';
import { FerryError } from '../errors.js';
import { blockId, compressRawBlockInto, compressorOf, decodeAndVerify, decodeAndVerifyInto, encodeRawBlock, readFileRange, type FileRange, type SlotRead, type SlotWork } from '../repository/block-codec.js';
import { isAllZero, zeroRange } from '../util/zero.js';
import { wasSeen } from './seen-hashes.js';

export type BlockTask =
  | { op: 'encode'; block: Uint8Array; compressor: string; level: number }
  /** `raw` a view: a piece of a larger shared memory (`AlignedArena`). */
  | { op: 'slot'; slot: number; raw: SharedArrayBuffer | Uint8Array; out: SharedArrayBuffer }
  /** Announced to every thread (no answer): the session's table of ids met already (`seen-hashes.ts`). */
  | { op: 'seen'; table: SharedArrayBuffer }
  | { op: 'slot-encode'; slot: number; length: number; work: SlotWork; compressor: string; level: number }
  /** The block is read into the slot here first (`WorkerBlockCodec.readSlot`). */
  | { op: 'slot-read'; slot: number; length: number; read: SlotRead; work: SlotWork; compressor: string; level: number }
  /** `encoded` omitted: the block object is the first `encodedLength` bytes of the slot's `out`. */
  | { op: 'slot-decode'; encoded?: Uint8Array; encodedLength?: number; hash: Uint8Array; object: string; slot: number }
  /** `slot-decode` of a block object this thread first reads from a local file into the slot's `out`. */
  | { op: 'slot-read-decode'; range: FileRange; hash: Uint8Array; object: string; slot: number }
  | { op: 'decode'; encoded: Uint8Array; hash: Uint8Array; object: string };

/**
 * What a block task does, wherever it runs: on a worker thread (`block-worker.ts`) or on the
 * calling thread while a job is still small (`WorkerBlockCodec`'s inline budget). One code path, so
 * a block is hashed, compressed and checked the same way in both places.
 */
export class BlockTasks {
  private readonly compressors = new Map<string, Promise<Compressor>>();
  /** Block buffers shared with the main thread (`WorkerBlockCodec.takeSlot`), by slot id. */
  private readonly slots = new Map<number, { raw: Buffer; out: Buffer }>();

  /** `create`: a compressor by name (the plugin host stamps plugin and hook on what it throws). */
  constructor(
    private readonly create: (name: string) => Promise<Compressor>,
    /** Encrypted repositories: block ids are HMAC-SHA256 under this key. */
    private readonly idKey?: Uint8Array,
  ) {}

  /** Ids met already: `encode` work on a block found there hashes it only and answers `seen`. */
  private seen?: Uint8Array;

  addSlot(slot: number, raw: SharedArrayBuffer | Uint8Array, out: SharedArrayBuffer): void {
    const rawBuf = raw instanceof SharedArrayBuffer ? Buffer.from(raw) : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    this.slots.set(slot, { raw: rawBuf, out: Buffer.from(out) });
  }

  /** Takes an announcement (`slot`, `seen`): true when `task` was one (it has no answer). */
  announce(task: BlockTask): boolean {
    if (task.op === 'slot') this.addSlot(task.slot, task.raw, task.out);
    else if (task.op === 'seen') this.seen = new Uint8Array(task.table);
    else return false;
    return true;
  }

  private compressor(name: string): Promise<Compressor> {
    let c = this.compressors.get(name);
    if (!c) {
      c = this.create(name);
      this.compressors.set(name, c);
    }
    return c;
  }

  async handle(task: BlockTask): Promise<{ result: unknown; transfer: ArrayBuffer[] }> {
    const idKey = this.idKey;
    if (task.op === 'slot-encode' || task.op === 'slot-read') {
      const s = this.slots.get(task.slot);
      if (!s || task.length > s.raw.length) throw new FerryError('INTERNAL', `block slot ${task.slot} is unknown to this thread or too small`);
      const block = s.raw.subarray(0, task.length);
      if (task.op === 'slot-read') {
        const t0 = performance.now();
        readBlock(task.read, block);
        const readMs = performance.now() - t0;
        if (task.read.zeroCheck && isAllZero(block)) return { result: { zero: true, readMs }, transfer: [] };
        const hash = task.work === 'compress' ? undefined : new Uint8Array(blockId(block, idKey));
        if (task.work === 'hash') return { result: { hash, readMs }, transfer: [] };
        if (task.work === 'encode' && this.seen && wasSeen(this.seen, hash!)) return { result: { hash, seen: true, readMs }, transfer: [] };
        const encodedLength = compressRawBlockInto(block, task.compressor, await this.compressor(task.compressor), task.level, s.out);
        return { result: { hash, encodedLength, readMs }, transfer: [] };
      }
      // A fresh 32-byte copy: a digest may be a view of a larger pooled buffer, which would be cloned whole.
      const hash = task.work === 'compress' ? undefined : new Uint8Array(blockId(block, idKey));
      if (task.work === 'hash') return { result: { hash }, transfer: [] };
      // A block whose id this session met already is most likely stored: compressed only if it is not.
      if (task.work === 'encode' && this.seen && wasSeen(this.seen, hash!)) return { result: { hash, seen: true }, transfer: [] };
      const encodedLength = compressRawBlockInto(block, task.compressor, await this.compressor(task.compressor), task.level, s.out);
      return { result: { hash, encodedLength }, transfer: [] };
    }
    if (task.op === 'slot-decode' || task.op === 'slot-read-decode') {
      const s = this.slots.get(task.slot);
      if (!s) throw new FerryError('INTERNAL', `block slot ${task.slot} is unknown to this thread`);
      const encoded = task.op === 'slot-read-decode' ? readFileRange(task.range, s.out) : (task.encoded ?? s.out.subarray(0, task.encodedLength));
      const { name, c } = await this.decompressorOf(encoded, task.object);
      return { result: { rawLength: decodeAndVerifyInto(encoded, task.hash, task.object, c, name, s.raw, idKey) }, transfer: [] };
    }
    if (task.op === 'slot' || task.op === 'seen') throw new FerryError('INTERNAL', 'an announcement was sent as a task');
    if (task.op === 'encode') {
      const { hash, encoded } = encodeRawBlock(task.block, task.compressor, await this.compressor(task.compressor), task.level, idKey);
      return { result: { hash, encoded }, transfer: owned(encoded) };
    }
    const { name, c } = await this.decompressorOf(task.encoded, task.object);
    const raw = decodeAndVerify(task.encoded, task.hash, task.object, c, name, idKey);
    return { result: { raw }, transfer: owned(raw) };
  }

  /** The compressor a stored block names, or PLUGIN_NOT_FOUND naming the block. */
  private async decompressorOf(encoded: Uint8Array, object: string): Promise<{ name: string; c: Compressor }> {
    const name = compressorOf(encoded, object);
    const c = await this.compressor(name).catch(() => undefined);
    if (!c) throw new FerryError('PLUGIN_NOT_FOUND', `block was compressed with "${name}", which no loaded plugin provides`, { object });
    return { name, c };
  }
}

/**
 * Fills `block` from `read.fd`: each range with positional reads (repeated until complete), the
 * bytes between them with zeros. Errors are the transport's (`TRANSPORT_READ_FAILED` at the offset;
 * the session adds VM and disk).
 */
function readBlock(read: SlotRead, block: Buffer): void {
  const r = read.reads;
  let end = 0;
  for (let i = 0; i + 2 < r.length; i += 3) {
    const position = r[i]!;
    const at = r[i + 1]!;
    const length = r[i + 2]!;
    if (!(at >= end && at + length <= block.length)) throw new FerryError('INTERNAL', `read of ${length} bytes at ${at} does not fit a ${block.length}-byte block`);
    zeroRange(block, end, at);
    end = at + length;
    for (let done = 0; done < length; ) {
      let n: number;
      try {
        n = readSync(read.fd, block, at + done, length - done, position + done);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException)?.code ?? (err as Error)?.message;
        throw new FerryError('TRANSPORT_READ_FAILED', `reading ${length} bytes failed at byte ${position + done}: ${code}`, { offset: position }, { cause: err });
      }
      // The size was taken at open; an image that ends early has changed under the snapshot.
      if (n === 0) throw new FerryError('TRANSPORT_READ_FAILED', `the image ends at byte ${position + done}, inside a read of ${length} bytes`, { offset: position });
      done += n;
    }
  }
  zeroRange(block, end, block.length);
}

/** A buffer's memory can move back to the main thread only when it owns all of it. */
function owned(b: Uint8Array): ArrayBuffer[] {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer ? [b.buffer] : [];
}
