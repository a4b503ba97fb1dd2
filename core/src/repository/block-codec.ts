import { closeSync, openSync, readSync } from 'node:fs';
import type { Compressor } from '../contracts/compressor.js';
import { FerryError } from '../errors.js';
import { blockHeaderLength, decodeBlock, decodeBlockInto, encodeBlock, finishBlock, writeBlockHeader } from './block-object.js';
import { keyedBlockId } from './repository-cipher.js';
import { sha256 } from '../util/checksums.js';
import { copyBytes } from '../util/bytes.js';

/**
 * The CPU-heavy per-block work of both data movers: hashing and compressing on the source side,
 * decompressing and verifying on restore. `WorkerBlockCodec` runs it on every core; the functions
 * below are the one implementation both it and the inline codec use.
 */
export interface BlockCodec {
  /**
   * SHA-256 of the raw block and the encoded block object, in new memory: for callers that encode a
   * few blocks (tests, tools). May take ownership of `block`'s memory. The data movers use slots.
   */
  encode(block: Buffer, compressor: string, level: number): Promise<{ hash: Buffer; encoded: Buffer }>;
  /** Raw bytes of an encoded block object after CRC-32 and SHA-256 checks (errors name `object`). */
  decode(encoded: Uint8Array, hash: Uint8Array, object: string): Promise<Buffer>;
  close(): Promise<void>;
  /**
   * Block buffers reused across blocks (shared with the worker threads in `WorkerBlockCodec`), so a
   * block is read, hashed, compressed and encoded without allocating or moving memory per block. The
   * caller owns the slot until `giveSlot`.
   */
  takeSlot(length: number, opts?: SlotOptions): BlockSlot;
  giveSlot(slot: BlockSlot): void;
  /**
   * Hashes and/or encodes (`work`) the first `length` bytes of `slot.raw`; the encoded block object is
   * written to the start of `slot.out` and its length returned.
   */
  encodeSlot(slot: BlockSlot, length: number, work: SlotWork, compressor: string, level: number): Promise<{ hash?: Buffer; encodedLength?: number; seen?: boolean }>;
  /**
   * `decode` into the start of `slot.raw`; returns the raw length. May take `encoded`'s memory, unless
   * it is a view of the start of `slot.out` (a block read into the slot), which moves nothing.
   */
  decodeSlot(encoded: Uint8Array, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number>;
  /**
   * Reads a block into `slot.raw` from `read.fd` on the thread that then works on it (`length`
   * bytes: the `read.reads` ranges, the rest zeros), and with `read.zeroCheck` reports an all-zero
   * block instead of working on it; otherwise as `encodeSlot`. `readMs`: the time the read took.
   * Missing: the caller reads the block itself.
   */
  readSlot?(slot: BlockSlot, length: number, read: SlotRead, work: SlotWork, compressor: string, level: number): Promise<SlotReadResult>;
  /**
   * Notes the id of a block met in this session. `encode` work (`encodeSlot`, `readSlot`) on a block
   * whose id was noted may then skip compressing it and answer `seen: true` with the hash only: the
   * caller checks the repository and asks for `compress` when the block is not stored after all.
   */
  noteSeen?(hash: Uint8Array): void;
  /**
   * `decodeSlot` of the block object stored at `range` of a local file, read into the start of
   * `slot.out` by the thread that decodes it (no hand-off to an I/O thread and back). Read errors
   * are FerryErrors naming `range.key`: REPO_OBJECT_NOT_FOUND, REPO_CORRUPT_OBJECT (a short file),
   * REPO_IO.
   */
  readDecodeSlot?(range: FileRange, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number>;
  /**
   * Raw block bytes a data mover now knows it will hand over (a disk's changed blocks, a small disk
   * whole): a codec that starts threads on demand may keep work this small on the calling thread.
   */
  expectWork?(bytes: number): void;
}

/**
 * A block's bytes in an open file (`DiskHandle.fd`): `reads` holds triples of file position, offset in
 * the block and length; the block's other bytes are zeros.
 */
export interface SlotRead {
  fd: number;
  reads: number[];
  /** Report an all-zero block (`zero: true`) instead of hashing it (the `zero` filter's check). */
  zeroCheck: boolean;
}

export interface SlotReadResult {
  zero?: boolean;
  /** `encode` stopped after the hash: the id was noted as seen (`BlockCodec.noteSeen`). */
  seen?: boolean;
  hash?: Buffer;
  encodedLength?: number;
  readMs: number;
}

/** A block object's place in a local file (`RepositoryBackend.localFile`); `key` names the object for errors. */
export interface FileRange {
  file: string;
  key: string;
  offset: number;
  length: number;
}

/**
 * Reads `range` into the start of `into` on the calling thread (a worker's): the file is opened for
 * this read alone, so no descriptor outlives it whatever happens to the thread.
 */
export function readFileRange(range: FileRange, into: Uint8Array): Uint8Array {
  const { file, key, offset, length } = range;
  if (length > into.length) throw new FerryError('INTERNAL', `a ${length}-byte block object does not fit a ${into.length}-byte buffer`, { object: key });
  let fd: number | undefined;
  try {
    fd = openSync(file, 'r');
    for (let got = 0; got < length; ) {
      const n = readSync(fd, into, got, length - got, offset + got);
      if (n === 0) throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + length} bytes`, { object: key });
      got += n;
    }
    return into.subarray(0, length);
  } catch (err) {
    if (err instanceof FerryError) throw err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new FerryError('REPO_OBJECT_NOT_FOUND', `object ${key} not found (${file})`, { object: key });
    throw new FerryError('REPO_IO', `cannot read ${key} (${file}): ${e.code ?? e.message}`, { object: key });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** What `encodeSlot` does: both, the hash only, or the encoded block only. */
export type SlotWork = 'encode' | 'hash' | 'compress';

/** A reusable pair of buffers: the raw block goes into `raw`, its encoded block object comes out in `out`. */
export interface BlockSlot {
  readonly id: number;
  readonly raw: Buffer;
  readonly out: Buffer;
  /** `raw` starts on a page boundary (`SlotOptions.aligned`, when the codec could give it). */
  readonly aligned?: boolean;
}

export interface SlotOptions {
  /**
   * `raw` page-aligned, so that a block decoded into it can be written with `O_DIRECT` (a restore
   * into a file). Best effort: a codec that cannot align memory gives a plain slot, and a direct
   * write from it fails with EINVAL, which the writer handles.
   */
  aligned?: boolean;
}

/** The largest block object a raw block of `length` bytes encodes to (stored as `none` at worst). */
export function maxEncodedLength(length: number): number {
  return length + 14 + 32;
}

export type CompressorLookup = (name: string) => Compressor | undefined | Promise<Compressor | undefined>;

/**
 * A block's id: the SHA-256 of its content, or HMAC-SHA256 under the repository's id key when the
 * repository is encrypted (stored ids then reveal nothing about content; dedup still works).
 */
export function blockId(block: Uint8Array, idKey?: Uint8Array): Buffer {
  return idKey ? keyedBlockId(idKey, block) : sha256(block);
}

/** Hash, compress (falling back to `none` when that does not shrink the block) and encode. */
export function encodeRawBlock(block: Uint8Array, name: string, impl: Compressor, level: number, idKey?: Uint8Array): { hash: Buffer; encoded: Buffer } {
  return { hash: blockId(block, idKey), encoded: compressRawBlock(block, name, impl, level) };
}

/** Compress (falling back to `none` when that does not shrink the block) and encode. */
export function compressRawBlock(block: Uint8Array, name: string, impl: Compressor, level: number): Buffer {
  const payload = impl.compress(block, level);
  return payload.length >= block.length ? encodeBlock('none', block.length, block) : encodeBlock(name, block.length, payload);
}

/**
 * `compressRawBlock` written into `out` (at least `maxEncodedLength(block.length)` bytes) instead of
 * a new buffer; returns the encoded length. The same bytes: compressed when that shrinks the block,
 * else stored as `none`. Compressors with `compressInto` write their payload in place.
 */
export function compressRawBlockInto(block: Uint8Array, name: string, impl: Compressor, level: number, out: Buffer): number {
  if (out.length < maxEncodedLength(block.length)) throw new FerryError('INTERNAL', `an output of ${out.length} bytes is too small for a ${block.length}-byte block`);
  let head = blockHeaderLength(name);
  let n = 0;
  if (impl.compressInto) {
    n = impl.compressInto(block, level, out.subarray(head, head + block.length));
    if (!(n > 0 && n < block.length)) n = 0;
  } else {
    const payload = impl.compress(block, level);
    if (payload.length < block.length) {
      copyBytes(payload, out, head);
      n = payload.length;
    }
  }
  if (n > 0) {
    writeBlockHeader(out, name, block.length);
  } else {
    head = writeBlockHeader(out, 'none', block.length);
    copyBytes(block, out, head);
    n = block.length;
  }
  finishBlock(out, head + n);
  return head + n;
}

/** Decode and check a block object against the SHA-256 its block map names. */
export function decodeAndVerify(encoded: Uint8Array, hash: Uint8Array, object: string, compressor: Compressor | undefined, name: string, idKey?: Uint8Array): Buffer {
  const raw = decodeBlock(encoded, object, (n) => (n === name ? compressor : undefined));
  const buf = Buffer.isBuffer(raw) ? raw : Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
  if (!blockId(buf, idKey).equals(Buffer.from(hash))) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `block content does not match its ${idKey ? 'keyed id (HMAC-SHA-256)' : 'SHA-256'}`, { object });
  }
  return buf;
}

/** `decodeAndVerify` into the start of `out`; returns the raw length. */
export function decodeAndVerifyInto(encoded: Uint8Array, hash: Uint8Array, object: string, compressor: Compressor | undefined, name: string, out: Buffer, idKey?: Uint8Array): number {
  const n = decodeBlockInto(encoded, object, (c) => (c === name ? compressor : undefined), out);
  if (!blockId(out.subarray(0, n), idKey).equals(Buffer.from(hash))) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `block content does not match its ${idKey ? 'keyed id (HMAC-SHA-256)' : 'SHA-256'}`, { object });
  }
  return n;
}

/** The codec on the calling thread: for tests and for hosts without worker threads. */
export class InlineBlockCodec implements BlockCodec {
  private readonly freeSlots: BlockSlot[] = [];
  private slotCount = 0;

  /** `idKey`: the block-id key of an encrypted repository (ids are then HMAC-SHA256). */
  constructor(
    private readonly lookup: CompressorLookup,
    private readonly idKey?: Uint8Array,
  ) {}

  async encode(block: Buffer, compressor: string, level: number): Promise<{ hash: Buffer; encoded: Buffer }> {
    return encodeRawBlock(block, compressor, await this.require(compressor, 'block'), level, this.idKey);
  }

  async decode(encoded: Uint8Array, hash: Uint8Array, object: string): Promise<Buffer> {
    const name = compressorOf(encoded, object);
    return decodeAndVerify(encoded, hash, object, await this.lookup(name), name, this.idKey);
  }

  /** Plain buffers: nothing to share on one thread, but reused all the same. */
  takeSlot(length: number): BlockSlot {
    const i = this.freeSlots.findIndex((s) => s.raw.length >= length);
    if (i >= 0) return this.freeSlots.splice(i, 1)[0];
    return { id: ++this.slotCount, raw: Buffer.allocUnsafe(length), out: Buffer.allocUnsafe(maxEncodedLength(length)) };
  }

  giveSlot(slot: BlockSlot): void {
    this.freeSlots.push(slot);
  }

  async encodeSlot(slot: BlockSlot, length: number, work: SlotWork, compressor: string, level: number): Promise<{ hash?: Buffer; encodedLength?: number }> {
    const block = slot.raw.subarray(0, length);
    const hash = work === 'compress' ? undefined : blockId(block, this.idKey);
    if (work === 'hash') return { hash };
    return { hash, encodedLength: compressRawBlockInto(block, compressor, await this.require(compressor, 'block'), level, slot.out) };
  }

  async decodeSlot(encoded: Uint8Array, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number> {
    const name = compressorOf(encoded, object);
    return decodeAndVerifyInto(encoded, hash, object, await this.lookup(name), name, slot.raw, this.idKey);
  }

  async readDecodeSlot(range: FileRange, hash: Uint8Array, object: string, slot: BlockSlot): Promise<number> {
    return this.decodeSlot(readFileRange(range, slot.out), hash, object, slot);
  }

  async close(): Promise<void> {}

  private async require(name: string, object: string): Promise<Compressor> {
    const c = await this.lookup(name);
    if (!c) throw new FerryError('PLUGIN_NOT_FOUND', `no compressor "${name}" is available`, { object });
    return c;
  }
}

/** The compressor name recorded in a block object's header (validated later by the decode). */
export function compressorOf(encoded: Uint8Array, object: string): string {
  const n = encoded[9];
  if (encoded.length < 15 || n < 1 || n > 32 || 10 + n > encoded.length) {
    throw new FerryError('REPO_CORRUPT_OBJECT', 'block object has a malformed header', { object });
  }
  return Buffer.from(encoded.buffer, encoded.byteOffset + 10, n).toString('ascii');
}
