import { createHash, randomBytes } from 'node:crypto';
import { FerryError } from '../errors.js';
import { crc32, sha256 } from '../util/checksums.js';
import { SEALED_OBJECT_OVERHEAD, type RepositoryCipher } from './repository-cipher.js';

/**
 * Pack files and their index objects (`docs/repository-format.md`, "Pack files", "Index objects").
 * A pack: `FPK1`, a 4-byte random nonce, block objects back to back, a trailer of entries, the entry
 * count and a CRC-32 of the trailer. Its id is the SHA-256 of the whole pack. The nonce makes every
 * write of a pack a new id, even of the same blocks in the same order: garbage collection deletes a
 * condemned pack by id and must never hit a pack a later session wrote again (see "Garbage collection").
 */
const PACK_MAGIC = Buffer.from('FPK1', 'ascii');
/** A pack of an encrypted repository: sealed block records and a sealed trailer. */
const SEALED_PACK_MAGIC = Buffer.from('FPE1', 'ascii');
/** Version 2 packs (`docs/repository-format.md`, "Pack files, version 2"): a 16-byte header. */
const PACK_MAGIC_V2 = Buffer.from('FPK2', 'ascii');
const SEALED_PACK_MAGIC_V2 = Buffer.from('FPE2', 'ascii');
export const PACK_HEADER_V2 = 16;
const TRAILER_NAME = 'pack-trailer';
const INDEX_MAGIC = Buffer.from('FIDX', 'ascii');
const ENTRY = 44;
export const PACK_HEADER = 8;

export interface PackEntry {
  hash: Buffer;
  offset: number;
  length: number;
}

export interface SealedPack {
  id: string;
  bytes: Buffer;
  entries: PackEntry[];
}

/**
 * Size of the pack file that holds exactly these entries (header and trailer sizes are fixed; a
 * sealed trailer, `encrypted`, is larger by the envelope's overhead).
 */
export function packFileSize(entries: readonly PackEntry[], encrypted = false): number {
  return PACK_HEADER + entries.reduce((n, e) => n + e.length, 0) + ENTRY * entries.length + 8 + (encrypted ? SEALED_OBJECT_OVERHEAD : 0);
}

/**
 * Builds a pack from stored block records (in the order given). With `cipher` (an encrypted
 * repository) the records are already sealed and the trailer is sealed here: block ids and their
 * places are then as secret as the index objects.
 */
export function sealPack(blocks: { hash: Buffer; encoded: Uint8Array }[], cipher?: RepositoryCipher): SealedPack {
  const { parts, size, entries } = packParts(blocks, cipher);
  const bytes = Buffer.allocUnsafe(size);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return { id: sha256(bytes).toString('hex'), bytes, entries };
}

/**
 * A pack's pieces in file order: the header, the block records as given, and the trailer with its
 * entry count and CRC-32. `sealPack` joins them; the pack writer builds the same bytes in place
 * (`packHeader`, then the records, then `packTail`).
 */
export function packParts(blocks: { hash: Buffer; encoded: Uint8Array }[], cipher?: RepositoryCipher): { parts: Uint8Array[]; size: number; entries: PackEntry[] } {
  const entries: PackEntry[] = [];
  let offset = PACK_HEADER;
  for (const b of blocks) {
    entries.push({ hash: b.hash, offset, length: b.encoded.length });
    offset += b.encoded.length;
  }
  const tail = packTail(entries, cipher);
  return { parts: [packHeader(cipher), ...blocks.map((b) => b.encoded), tail], size: offset + tail.length, entries };
}

/** The first `PACK_HEADER` bytes of a new pack: its magic and a fresh random nonce. */
export function packHeader(cipher?: RepositoryCipher): Buffer {
  const head = Buffer.alloc(PACK_HEADER);
  (cipher ? SEALED_PACK_MAGIC : PACK_MAGIC).copy(head, 0);
  randomBytes(4).copy(head, 4);
  return head;
}

/** The header of a new version 2 pack: its magic and 12 random bytes. */
export function packHeaderV2(cipher?: RepositoryCipher): Buffer {
  const head = Buffer.alloc(PACK_HEADER_V2);
  (cipher ? SEALED_PACK_MAGIC_V2 : PACK_MAGIC_V2).copy(head, 0);
  randomBytes(12).copy(head, 4);
  return head;
}

/**
 * A version 2 pack id: SHA-256 of the header and the tail (trailer entries, count, CRC-32) as
 * stored. No pass over the block objects: their hashes and places are in the trailer, and each
 * carries its own CRC-32 (`checkPackV2`).
 */
export function packIdV2(head: Uint8Array, tail: Uint8Array): string {
  return createHash('sha256').update(head).update(tail).digest('hex');
}

/** The pack format (1 or 2) by its magic; undefined when it is neither. */
export function packFormat(pack: Uint8Array): 1 | 2 | undefined {
  const m = Buffer.from(pack.buffer, pack.byteOffset, Math.min(4, pack.byteLength));
  if (m.equals(PACK_MAGIC) || m.equals(SEALED_PACK_MAGIC)) return 1;
  if (m.equals(PACK_MAGIC_V2) || m.equals(SEALED_PACK_MAGIC_V2)) return 2;
  return undefined;
}

/**
 * Checks a whole pack against its id and returns its entries (an index rebuild): version 1 by the
 * SHA-256 of every byte; version 2 by the SHA-256 of header and tail, then the CRC-32 of every block
 * object at the place the trailer gives. REPO_CORRUPT_OBJECT naming the pack when anything fails.
 */
export function checkPack(pack: Uint8Array, id: string, object: string, cipher?: RepositoryCipher): PackEntry[] {
  const buf = Buffer.from(pack.buffer, pack.byteOffset, pack.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `pack ${why}`, { object });
  const format = packFormat(buf);
  if (format === 1) {
    if (sha256(buf).toString('hex') !== id) throw bad('does not hash to its id');
    return readPackTrailer(buf, object, cipher);
  }
  const entries = readPackTrailer(buf, object, cipher);
  const tailStart = entries.reduce((end, e) => Math.max(end, e.offset + e.length), PACK_HEADER_V2);
  const tailAt = buf.length - 8 - trailerBytes(entries.length, Boolean(cipher));
  if (tailStart > tailAt || packIdV2(buf.subarray(0, PACK_HEADER_V2), buf.subarray(tailAt)) !== id) throw bad('header and trailer do not hash to its id');
  for (const [i, e] of entries.entries()) {
    const rec = buf.subarray(e.offset, e.offset + e.length);
    if (rec.length < 8 || crc32(rec.subarray(8)) !== rec.readUInt32LE(4)) throw bad(`block object ${i} (at ${e.offset}) fails its CRC-32 check`);
  }
  return entries;
}

function trailerBytes(n: number, sealed: boolean): number {
  return n * ENTRY + (sealed ? SEALED_OBJECT_OVERHEAD : 0);
}

/** A pack's trailer (sealed in an encrypted repository), its entry count and its CRC-32. */
export function packTail(entries: PackEntry[], cipher?: RepositoryCipher): Buffer {
  const plainTrailer = encodeEntries(entries);
  const trailer = cipher ? cipher.sealObject(TRAILER_NAME, plainTrailer) : plainTrailer;
  const tail = Buffer.alloc(trailer.length + 8);
  trailer.copy(tail, 0);
  tail.writeUInt32LE(entries.length, trailer.length);
  tail.writeUInt32LE(crc32(tail.subarray(0, trailer.length + 4)), trailer.length + 4);
  return tail;
}

/** The entries of a pack from its trailer (for index rebuilds and verification). */
export function readPackTrailer(pack: Uint8Array, object: string, cipher?: RepositoryCipher): PackEntry[] {
  const buf = Buffer.from(pack.buffer, pack.byteOffset, pack.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `pack ${why}`, { object });
  const format = packFormat(buf);
  const magic = buf.subarray(0, 4);
  const sealed = magic.equals(SEALED_PACK_MAGIC) || magic.equals(SEALED_PACK_MAGIC_V2);
  const header = format === 2 ? PACK_HEADER_V2 : PACK_HEADER;
  if (format === undefined || buf.length < header + 8) throw bad('has no FPK1, FPE1, FPK2 or FPE2 header');
  if (sealed !== Boolean(cipher)) throw bad(sealed ? 'is encrypted but no key was given' : 'is not encrypted in an encrypted repository');
  const n = buf.readUInt32LE(buf.length - 8);
  const start = buf.length - 8 - n * ENTRY - (sealed ? SEALED_OBJECT_OVERHEAD : 0);
  if (start < header) throw bad('has an impossible entry count');
  if (crc32(buf.subarray(start, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw bad('trailer fails its CRC-32 check');
  const trailer = cipher ? cipher.openObject(TRAILER_NAME, buf.subarray(start, buf.length - 8), object) : buf.subarray(start, start + n * ENTRY);
  return decodeEntries(trailer, start, object, header);
}

export function encodeIndex(packId: string, entries: PackEntry[]): Buffer {
  const body = encodeEntries(entries);
  const out = Buffer.allocUnsafe(44 + body.length + 4);
  INDEX_MAGIC.copy(out, 0);
  out.writeUInt32LE(1, 4);
  Buffer.from(packId, 'hex').copy(out, 8);
  out.writeUInt32LE(entries.length, 40);
  body.copy(out, 44);
  out.writeUInt32LE(crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

export function decodeIndex(data: Uint8Array, object: string): { packId: string; entries: PackEntry[] } {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `index object ${why}`, { object });
  if (buf.length < 48 || !buf.subarray(0, 4).equals(INDEX_MAGIC)) throw bad('has no FIDX header');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw bad('fails its CRC-32 check');
  if (buf.readUInt32LE(4) !== 1) throw bad(`has unsupported version ${buf.readUInt32LE(4)}`);
  const n = buf.readUInt32LE(40);
  if (buf.length !== 48 + n * ENTRY) throw bad('has an inconsistent entry count');
  return { packId: buf.subarray(8, 40).toString('hex'), entries: decodeEntries(buf.subarray(44, 44 + n * ENTRY), Infinity, object) };
}

/** A checked index object's entries without allocating per entry (opening a repository). */
export interface IndexEntries {
  packId: string;
  count: number;
  /** `hash` is a view valid only during the call. */
  forEach(fn: (hash: Uint8Array, offset: number, length: number) => void): void;
}

/** `decodeIndex` with the same checks, for callers that only walk the entries once. */
export function indexEntries(data: Uint8Array, object: string): IndexEntries {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `index object ${why}`, { object });
  if (buf.length < 48 || !buf.subarray(0, 4).equals(INDEX_MAGIC)) throw bad('has no FIDX header');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw bad('fails its CRC-32 check');
  if (buf.readUInt32LE(4) !== 1) throw bad(`has unsupported version ${buf.readUInt32LE(4)}`);
  const n = buf.readUInt32LE(40);
  if (buf.length !== 48 + n * ENTRY) throw bad('has an inconsistent entry count');
  for (let i = 0, at = 44; i < n; i++, at += ENTRY) {
    if (buf.readUInt32LE(at + 36) !== 0 || buf.readUInt32LE(at + 32) < PACK_HEADER) throw bad(`entry ${i} points outside the pack's blocks`);
  }
  return {
    packId: buf.subarray(8, 40).toString('hex'),
    count: n,
    forEach(fn) {
      for (let i = 0, at = 44; i < n; i++, at += ENTRY) fn(buf.subarray(at, at + 32), buf.readUInt32LE(at + 32), buf.readUInt32LE(at + 40));
    },
  };
}

function encodeEntries(entries: PackEntry[]): Buffer {
  const out = Buffer.allocUnsafe(entries.length * ENTRY);
  entries.forEach((e, i) => {
    e.hash.copy(out, i * ENTRY);
    out.writeBigUInt64LE(BigInt(e.offset), i * ENTRY + 32);
    out.writeUInt32LE(e.length, i * ENTRY + 40);
  });
  return out;
}

/** Entries must lie inside the block area (before `limit`, the trailer's start). */
function decodeEntries(buf: Buffer, limit: number, object: string, header = PACK_HEADER): PackEntry[] {
  const out: PackEntry[] = [];
  for (let at = 0; at < buf.length; at += ENTRY) {
    const e = { hash: Buffer.from(buf.subarray(at, at + 32)), offset: Number(buf.readBigUInt64LE(at + 32)), length: buf.readUInt32LE(at + 40) };
    if (e.offset < header || e.offset + e.length > limit) {
      throw new FerryError('REPO_CORRUPT_OBJECT', `entry ${at / ENTRY} points outside the pack's blocks`, { object });
    }
    out.push(e);
  }
  return out;
}
