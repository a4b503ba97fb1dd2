import { createHash } from 'node:crypto';
import { FerryError } from '../errors.js';
import { crc32 } from '../util/checksums.js';
import type { PackEntry } from './pack.js';

/**
 * Consolidated index objects of format 2 (`docs/repository-format.md`, "Index objects, version 2"):
 * many packs per object, entries sorted by hash, written once under `indexes/<SHA-256 of the object
 * as stored>`. Not written by repositories of format 1.
 */
const MAGIC = Buffer.from('FIX2', 'ascii');
const PACK_ROW = 40;
const ENTRY_ROW = 44;
const DAY_MS = 86_400_000;

export const INDEXES_PREFIX = 'indexes/';

export function indexObjectKey(id: string): string {
  return `${INDEXES_PREFIX}${id}`;
}

/** A pack as a format 2 index object lists it. */
export interface IndexedPack {
  id: string;
  /** How its id was computed: 1 = SHA-256 of the whole pack, 2 = of header and tail. */
  format: 1 | 2;
  /** Retain-until date given when the object was written (UTC midnight), if any. */
  retainUntil?: Date;
  /** Size of the pack file. */
  size: number;
}

export interface DecodedIndexObject {
  packs: IndexedPack[];
  count: number;
  /** Calls `fn` for every entry in hash order; `hash` is a view valid only during the call. */
  forEach(fn: (hash: Uint8Array, pack: number, offset: number, length: number) => void): void;
}

export function encodeIndexV2(packs: (IndexedPack & { entries: PackEntry[] })[]): Buffer {
  const rows: { hash: Buffer; pack: number; offset: number; length: number }[] = [];
  packs.forEach((p, n) => {
    for (const e of p.entries) rows.push({ hash: e.hash, pack: n, offset: e.offset, length: e.length });
  });
  rows.sort((a, b) => Buffer.compare(a.hash, b.hash) || a.pack - b.pack);
  const out = Buffer.alloc(16 + PACK_ROW * packs.length + ENTRY_ROW * rows.length + 4);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(2, 4);
  out.writeUInt32LE(packs.length, 8);
  out.writeUInt32LE(rows.length, 12);
  let at = 16;
  for (const p of packs) {
    Buffer.from(p.id, 'hex').copy(out, at);
    out[at + 32] = p.format;
    out.writeUIntLE(p.retainUntil ? Math.ceil(p.retainUntil.getTime() / DAY_MS) : 0, at + 33, 3);
    out.writeUInt32LE(p.size, at + 36);
    at += PACK_ROW;
  }
  for (const r of rows) {
    if (r.offset > 0xffffffff) throw new FerryError('INTERNAL', `offset ${r.offset} does not fit a format 2 index entry`);
    r.hash.copy(out, at);
    out.writeUInt32LE(r.pack, at + 32);
    out.writeUInt32LE(r.offset, at + 36);
    out.writeUInt32LE(r.length, at + 40);
    at += ENTRY_ROW;
  }
  out.writeUInt32LE(crc32(out.subarray(0, at)), at);
  return out;
}

export function decodeIndexV2(data: Uint8Array, object: string): DecodedIndexObject {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `index object ${why}`, { object });
  if (buf.length < 20 || !buf.subarray(0, 4).equals(MAGIC)) throw bad('has no FIX2 header');
  if (crc32(buf.subarray(0, buf.length - 4)) !== buf.readUInt32LE(buf.length - 4)) throw bad('fails its CRC-32 check');
  if (buf.readUInt32LE(4) !== 2) throw bad(`has unsupported version ${buf.readUInt32LE(4)}`);
  const p = buf.readUInt32LE(8);
  const n = buf.readUInt32LE(12);
  if (buf.length !== 16 + PACK_ROW * p + ENTRY_ROW * n + 4) throw bad('has inconsistent pack and entry counts');
  const packs: IndexedPack[] = [];
  for (let i = 0, at = 16; i < p; i++, at += PACK_ROW) {
    const format = buf[at + 32];
    if (format !== 1 && format !== 2) throw bad(`lists pack ${i} with unknown format ${format}`);
    const day = buf.readUIntLE(at + 33, 3);
    packs.push({ id: buf.subarray(at, at + 32).toString('hex'), format, ...(day > 0 && { retainUntil: new Date(day * DAY_MS) }), size: buf.readUInt32LE(at + 36) });
  }
  const base = 16 + PACK_ROW * p;
  for (let i = 0, at = base; i < n; i++, at += ENTRY_ROW) {
    const pack = buf.readUInt32LE(at + 32);
    if (pack >= p) throw bad(`entry ${i} names pack ${pack} of ${p}`);
    if (i > 0 && Buffer.compare(buf.subarray(at - ENTRY_ROW, at - ENTRY_ROW + 32), buf.subarray(at, at + 32)) > 0) throw bad(`entry ${i} is out of hash order`);
  }
  return {
    packs,
    count: n,
    forEach(fn) {
      for (let i = 0, at = base; i < n; i++, at += ENTRY_ROW) fn(buf.subarray(at, at + 32), buf.readUInt32LE(at + 32), buf.readUInt32LE(at + 36), buf.readUInt32LE(at + 40));
    },
  };
}

/** The name a format 2 index object is sealed to: its key is the hash of the sealed bytes. */
export const INDEX_OBJECT_NAME = 'index';

/**
 * Encodes, seals (encrypted repositories) and names a format 2 index object: its key is the SHA-256
 * of the bytes as stored, so a copy (cached, or read back) is checked without the key.
 */
export function storedIndexObject(
  packs: (IndexedPack & { entries: PackEntry[] })[],
  seal?: (name: string, plain: Uint8Array) => Uint8Array,
): { key: string; stored: Uint8Array } {
  const plain = encodeIndexV2(packs);
  const stored = seal ? seal(INDEX_OBJECT_NAME, plain) : plain;
  return { key: indexObjectKey(createHash('sha256').update(stored).digest('hex')), stored };
}
