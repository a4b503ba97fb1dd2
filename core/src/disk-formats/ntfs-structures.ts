import { FerryError } from '../errors.js';

/**
 * NTFS on-disk structures, decoded from bytes only (no I/O): the boot sector, MFT (FILE) records and
 * index (INDX) records with their update-sequence fixups, attribute headers, data runs, and the
 * values of $STANDARD_INFORMATION, $FILE_NAME, $ATTRIBUTE_LIST and index entries. Written from the
 * public descriptions of the format (the Linux-NTFS project's "NTFS Documentation", the ntfs-3g
 * `layout.h` comments, Microsoft's "NTFS on-disk structures" pages); offsets are named where used.
 * Every check that fails throws `DISK_FORMAT_INVALID` naming the structure and its byte offset
 * on the volume.
 */

export const ATTR = {
  STANDARD_INFORMATION: 0x10,
  ATTRIBUTE_LIST: 0x20,
  FILE_NAME: 0x30,
  DATA: 0x80,
  INDEX_ROOT: 0x90,
  INDEX_ALLOCATION: 0xa0,
  BITMAP: 0xb0,
  END: 0xffffffff,
} as const;

export const ATTR_FLAG_COMPRESSED = 0x0001;
export const ATTR_FLAG_ENCRYPTED = 0x4000;
export const ATTR_FLAG_SPARSE = 0x8000;
export const RECORD_IN_USE = 0x0001;
export const RECORD_DIRECTORY = 0x0002;
/** Namespace of a $FILE_NAME that is only the 8.3 alias of another name of the same file. */
export const NAMESPACE_DOS = 2;

export interface BootSector {
  bytesPerSector: number;
  clusterSize: number;
  totalSectors: number;
  mftLcn: number;
  mftMirrLcn: number;
  recordSize: number;
  indexRecordSize: number;
  serial: string;
}

export interface Run {
  /** First cluster of the run inside the attribute's stream. */
  vcn: number;
  /** First cluster on the volume; `undefined` for a sparse run (reads as zeros). */
  lcn: number | undefined;
  length: number;
}

export interface Attribute {
  type: number;
  name: string;
  flags: number;
  id: number;
  nonResident: boolean;
  /** Resident value. */
  value?: Uint8Array;
  /** Non-resident: the VCN range this piece of the attribute maps, its runs, and (first piece only) the sizes. */
  startVcn?: number;
  lastVcn?: number;
  runs?: Run[];
  allocatedSize?: number;
  dataSize?: number;
  initializedSize?: number;
}

export interface MftRecord {
  number: number;
  flags: number;
  sequence: number;
  /** The base record this one extends (0 for a base record). */
  baseRecord: number;
  attributes: Attribute[];
}

export interface FileName {
  parent: number;
  name: string;
  namespace: number;
  flags: number;
  dataSize: number;
}

export interface StandardInformation {
  created: Date;
  modified: Date;
  changed: Date;
  accessed: Date;
  attributes: number;
}

export interface AttributeListEntry {
  type: number;
  name: string;
  startVcn: number;
  record: number;
  id: number;
}

export interface IndexEntry {
  record: number;
  /** The key: a $FILE_NAME for directory indexes; absent on the last entry of a node. */
  fileName?: FileName;
  /** VCN of the child node holding the keys sorted before this one. */
  child?: number;
  last: boolean;
}

export function invalid(what: string, detail: string, offset: number): FerryError {
  return new FerryError('DISK_FORMAT_INVALID', `NTFS ${what}: ${detail}`, { offset });
}

function dv(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function u64(v: DataView, at: number): number {
  const n = v.getBigUint64(at, true);
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw invalid('field', `64-bit value ${n} is out of range`, at);
  return Number(n);
}

/** Sizes stored as a signed byte: positive counts clusters, negative n means 2^-n bytes. */
function clustersOrPower(v: number, clusterSize: number): number {
  const s = v > 127 ? v - 256 : v;
  return s < 0 ? 2 ** -s : s * clusterSize;
}

export function parseBootSector(b: Uint8Array): BootSector {
  const v = dv(b);
  if (Buffer.from(b.subarray(3, 11)).toString('latin1') !== 'NTFS    ') throw invalid('boot sector', 'no "NTFS    " OEM id', 3);
  const bytesPerSector = v.getUint16(0x0b, true);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector)) throw invalid('boot sector', `${bytesPerSector} bytes per sector`, 0x0b);
  const spc = b[0x0d]!;
  // Above 0x80 the byte is a negative power of two (cluster sizes over 64 KiB, Windows 10 1709+).
  const sectorsPerCluster = spc > 0x80 ? 2 ** (256 - spc) : spc;
  if (sectorsPerCluster === 0 || (sectorsPerCluster & (sectorsPerCluster - 1)) !== 0) throw invalid('boot sector', `${spc} sectors per cluster`, 0x0d);
  const clusterSize = bytesPerSector * sectorsPerCluster;
  if (clusterSize > 2 * 1024 * 1024) throw invalid('boot sector', `cluster size ${clusterSize} over 2 MiB`, 0x0d);
  const recordSize = clustersOrPower(b[0x40]!, clusterSize);
  const indexRecordSize = clustersOrPower(b[0x44]!, clusterSize);
  for (const [what, size, at] of [['MFT record', recordSize, 0x40], ['index record', indexRecordSize, 0x44]] as const) {
    if (size < 512 || size > 65536 || (size & (size - 1)) !== 0) throw invalid('boot sector', `${what} size ${size}`, at);
  }
  return {
    bytesPerSector,
    clusterSize,
    totalSectors: u64(v, 0x28),
    mftLcn: u64(v, 0x30),
    mftMirrLcn: u64(v, 0x38),
    recordSize,
    indexRecordSize,
    serial: v.getBigUint64(0x48, true).toString(16).padStart(16, '0'),
  };
}

/**
 * Undoes the update-sequence protection of a multi-sector record in place: the last two bytes of
 * every 512-byte stride must equal the update sequence number and are replaced by the saved bytes.
 * A mismatch is a torn write (or not a record at all).
 */
export function applyFixups(b: Uint8Array, magic: string, what: string, volumeOffset: number): void {
  if (Buffer.from(b.subarray(0, 4)).toString('latin1') !== magic) throw invalid(what, `no "${magic}" signature`, volumeOffset);
  const v = dv(b);
  const usaOffset = v.getUint16(4, true);
  const usaCount = v.getUint16(6, true);
  const strides = b.length / 512;
  if (usaCount !== strides + 1 || usaOffset + usaCount * 2 > b.length || usaOffset < 8) {
    throw invalid(what, `update sequence array (offset ${usaOffset}, ${usaCount} entries) does not fit ${strides} strides`, volumeOffset + 4);
  }
  const usn = v.getUint16(usaOffset, true);
  for (let i = 0; i < strides; i++) {
    const at = i * 512 + 510;
    if (v.getUint16(at, true) !== usn) throw invalid(what, `stride ${i} fails its update sequence check (torn write)`, volumeOffset + at);
    v.setUint16(at, v.getUint16(usaOffset + 2 + i * 2, true), true);
  }
}

/** A FILE record after fixups: header fields and every attribute in it. */
export function parseMftRecord(b: Uint8Array, number: number, volumeOffset: number): MftRecord {
  const what = `MFT record ${number}`;
  applyFixups(b, 'FILE', what, volumeOffset);
  const v = dv(b);
  const firstAttr = v.getUint16(0x14, true);
  const used = v.getUint32(0x18, true);
  if (used > b.length || firstAttr < 0x30 || firstAttr >= used) throw invalid(what, `attributes at ${firstAttr}, ${used} bytes used of ${b.length}`, volumeOffset + 0x14);
  const attributes: Attribute[] = [];
  let at = firstAttr;
  for (;;) {
    if (at + 4 > used) throw invalid(what, 'attribute list runs past the used size', volumeOffset + at);
    const type = v.getUint32(at, true);
    if (type === ATTR.END) break;
    const length = v.getUint32(at + 4, true);
    if (length < 0x18 || at + length > used || length % 8 !== 0) throw invalid(what, `attribute of type 0x${type.toString(16)} has length ${length}`, volumeOffset + at);
    attributes.push(parseAttribute(b.subarray(at, at + length), what, volumeOffset + at));
    at += length;
  }
  return { number, flags: v.getUint16(0x16, true), sequence: v.getUint16(0x10, true), baseRecord: u64(v, 0x20) % 2 ** 48, attributes };
}

function parseAttribute(a: Uint8Array, record: string, offset: number): Attribute {
  const v = dv(a);
  const type = v.getUint32(0, true);
  const nonResident = a[8] !== 0;
  const nameLength = a[9]!;
  const nameOffset = v.getUint16(0x0a, true);
  if (nameOffset + nameLength * 2 > a.length) throw invalid(record, `attribute name past its end`, offset + 0x0a);
  const name = Buffer.from(a.subarray(nameOffset, nameOffset + nameLength * 2)).toString('utf16le');
  const base = { type, name, flags: v.getUint16(0x0c, true), id: v.getUint16(0x0e, true), nonResident };
  if (!nonResident) {
    const valueLength = v.getUint32(0x10, true);
    const valueOffset = v.getUint16(0x14, true);
    if (valueOffset + valueLength > a.length) throw invalid(record, `resident value of type 0x${type.toString(16)} past its attribute`, offset + 0x10);
    return { ...base, value: a.subarray(valueOffset, valueOffset + valueLength) };
  }
  if (a.length < 0x40) throw invalid(record, 'non-resident attribute header too short', offset);
  const runsOffset = v.getUint16(0x20, true);
  if (runsOffset >= a.length) throw invalid(record, 'data runs past the attribute', offset + 0x20);
  const startVcn = u64(v, 0x10);
  return {
    ...base,
    startVcn,
    lastVcn: Number(v.getBigInt64(0x18, true)),
    runs: decodeRuns(a.subarray(runsOffset), startVcn, offset + runsOffset),
    allocatedSize: u64(v, 0x28),
    dataSize: u64(v, 0x30),
    initializedSize: u64(v, 0x38),
  };
}

/**
 * Data runs: a header byte whose low nibble is the byte count of the run length and whose high
 * nibble is that of the LCN delta (signed, relative to the previous run's LCN; 0 bytes: sparse),
 * until a 0 header.
 */
export function decodeRuns(b: Uint8Array, startVcn: number, offset: number): Run[] {
  const runs: Run[] = [];
  let vcn = startVcn;
  let lcn = 0;
  let at = 0;
  while (at < b.length && b[at] !== 0) {
    const lenBytes = b[at]! & 0x0f;
    const offBytes = b[at]! >> 4;
    if (lenBytes === 0 || lenBytes > 8 || offBytes > 8 || at + 1 + lenBytes + offBytes > b.length) throw invalid('data runs', `bad run header 0x${b[at]!.toString(16)}`, offset + at);
    const length = Number(readInt(b, at + 1, lenBytes, false));
    const delta = readInt(b, at + 1 + lenBytes, offBytes, true);
    if (length <= 0) throw invalid('data runs', `run of ${length} clusters`, offset + at);
    if (offBytes === 0) {
      runs.push({ vcn, lcn: undefined, length });
    } else {
      lcn += Number(delta);
      if (lcn < 0) throw invalid('data runs', `run starts at negative cluster ${lcn}`, offset + at);
      runs.push({ vcn, lcn, length });
    }
    vcn += length;
    at += 1 + lenBytes + offBytes;
  }
  return runs;
}

function readInt(b: Uint8Array, at: number, n: number, signed: boolean): bigint {
  let x = 0n;
  for (let i = n - 1; i >= 0; i--) x = (x << 8n) | BigInt(b[at + i]!);
  if (signed && n > 0 && b[at + n - 1]! & 0x80) x -= 1n << BigInt(8 * n);
  return x;
}

/** FILETIME: 100 ns ticks since 1601-01-01 UTC. */
export function fileTime(v: DataView, at: number): Date {
  const ticks = v.getBigUint64(at, true);
  return new Date(Number(ticks / 10000n) - 11644473600000);
}

export function parseStandardInformation(b: Uint8Array, offset: number): StandardInformation {
  if (b.length < 0x24) throw invalid('$STANDARD_INFORMATION', `${b.length} bytes (at least 36)`, offset);
  const v = dv(b);
  return { created: fileTime(v, 0), modified: fileTime(v, 8), changed: fileTime(v, 0x10), accessed: fileTime(v, 0x18), attributes: v.getUint32(0x20, true) };
}

export function parseFileName(b: Uint8Array, offset: number): FileName {
  if (b.length < 0x42) throw invalid('$FILE_NAME', `${b.length} bytes (at least 66)`, offset);
  const v = dv(b);
  const len = b[0x40]!;
  if (0x42 + len * 2 > b.length) throw invalid('$FILE_NAME', `name of ${len} characters past its end`, offset + 0x40);
  return {
    parent: u64(v, 0) % 2 ** 48,
    dataSize: u64(v, 0x30),
    flags: v.getUint32(0x38, true),
    name: Buffer.from(b.subarray(0x42, 0x42 + len * 2)).toString('utf16le'),
    namespace: b[0x41]!,
  };
}

export function parseAttributeList(b: Uint8Array, offset: number): AttributeListEntry[] {
  const v = dv(b);
  const out: AttributeListEntry[] = [];
  let at = 0;
  while (at + 0x1a <= b.length) {
    const length = v.getUint16(at + 4, true);
    if (length < 0x1a || at + length > b.length) throw invalid('$ATTRIBUTE_LIST', `entry of ${length} bytes`, offset + at);
    const nameLength = b[at + 6]!;
    const nameOffset = b[at + 7]!;
    out.push({
      type: v.getUint32(at, true),
      name: Buffer.from(b.subarray(at + nameOffset, at + nameOffset + nameLength * 2)).toString('utf16le'),
      startVcn: u64(v, at + 8),
      record: u64(v, at + 0x10) % 2 ** 48,
      id: v.getUint16(at + 0x18, true),
    });
    at += length;
  }
  return out;
}

/**
 * The entries of one index node. `node` starts at the node header (offset 0x10 of $INDEX_ROOT's
 * value, 0x18 of an INDX record): offset to the first entry, total size of the entries.
 */
export function parseIndexNode(node: Uint8Array, what: string, offset: number): IndexEntry[] {
  const v = dv(node);
  const first = v.getUint32(0, true);
  const total = v.getUint32(4, true);
  if (total > node.length || first >= total) throw invalid(what, `entries ${first}-${total} outside the node's ${node.length} bytes`, offset);
  const out: IndexEntry[] = [];
  let at = first;
  for (;;) {
    if (at + 0x10 > total) throw invalid(what, 'index entries run past the node without a last entry', offset + at);
    const length = v.getUint16(at + 8, true);
    const keyLength = v.getUint16(at + 0x0a, true);
    const flags = v.getUint16(at + 0x0c, true);
    if (length < 0x10 || at + length > total || 0x10 + keyLength > length) throw invalid(what, `index entry of ${length} bytes`, offset + at);
    const entry: IndexEntry = { record: u64(v, at) % 2 ** 48, last: (flags & 2) !== 0 };
    if (flags & 1) entry.child = u64(v, at + length - 8);
    if (!entry.last && keyLength > 0) entry.fileName = parseFileName(node.subarray(at + 0x10, at + 0x10 + keyLength), offset + at + 0x10);
    out.push(entry);
    if (entry.last) return out;
    at += length;
  }
}
