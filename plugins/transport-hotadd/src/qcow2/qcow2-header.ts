import type { ImageFile } from './image-file.js';

/** What the reader needs from a qcow2 header and its header extensions (spec: QEMU docs/interop/qcow2.txt). */
export interface Qcow2Header {
  version: 2 | 3;
  clusterBits: number;
  clusterSize: number;
  /** Guest-visible size in bytes. */
  virtualSize: number;
  cryptMethod: number;
  l1Size: number;
  l1TableOffset: number;
  /** Feature bitmaps; always 0 for version 2. */
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  /** 0 = zlib (also when the field is absent), 1 = zstd. */
  compressionType: number;
  /** The backing file name exactly as stored (relative names are relative to this image's folder). */
  backingFile?: string;
  /** From the backing file format extension; absent in images written without `-F`. */
  backingFormat?: string;
  /** From the external data file name extension. */
  dataFile?: string;
  /** Names from the feature name table, keyed `incompatible:4`, `compatible:0`, `autoclear:1`. */
  featureNames: Map<string, string>;
}

export const INCOMPATIBLE = { dirty: 0n, corrupt: 1n, externalData: 2n, compressionType: 3n, extendedL2: 4n } as const;

const V2_HEADER_LENGTH = 72;
const V3_MIN_HEADER_LENGTH = 104;
const MIN_CLUSTER_BITS = 9;
/** QEMU's own limit: it does not open images with clusters above 2 MiB, so neither do we. */
const MAX_CLUSTER_BITS = 21;
const MAX_BACKING_NAME = 1023;

const EXT_END = 0x00000000;
const EXT_BACKING_FORMAT = 0xe2792aca;
const EXT_FEATURE_NAMES = 0x6803f857;
const EXT_DATA_FILE = 0x44415441;
const FEATURE_TYPES = ['incompatible', 'compatible', 'autoclear'] as const;
const FEATURE_ENTRY = 48;

const CRYPT_METHODS: Record<number, string> = { 1: 'AES', 2: 'LUKS' };
const COMPRESSION_ZLIB = 0;
const COMPRESSION_ZSTD = 1;
const KNOWN_INCOMPATIBLE: readonly bigint[] = Object.values(INCOMPATIBLE);

/**
 * Reads and checks the header of the qcow2 image in `file`. Throws a corrupt-image error for fields
 * that cannot be right and an unsupported-format error for versions and sizes this reader refuses;
 * feature bits are judged separately (`checkQcow2Features`).
 */
export async function readQcow2Header(file: ImageFile): Promise<Qcow2Header> {
  if (file.size < V2_HEADER_LENGTH) throw file.corrupt(`the file is ${file.size} bytes, too short for a qcow2 header`);
  const fixed = await file.read(0, V2_HEADER_LENGTH, 'the qcow2 header');
  const version = fixed.readUInt32BE(4);
  if (version !== 2 && version !== 3) throw file.unsupported(`qcow2 version ${version} (hot-add reads versions 2 and 3)`);
  const clusterBits = fixed.readUInt32BE(20);
  if (clusterBits < MIN_CLUSTER_BITS) throw file.corrupt(`cluster_bits is ${clusterBits}, below the minimum of ${MIN_CLUSTER_BITS}`);
  if (clusterBits > MAX_CLUSTER_BITS) throw file.unsupported(`clusters of 2^${clusterBits} bytes (at most 2 MiB are supported)`);
  const clusterSize = 2 ** clusterBits;
  // Everything the header and its extensions may use sits in the first cluster.
  const head = await file.read(0, Math.min(clusterSize, file.size), 'the first cluster (header and extensions)');
  const header = parseFixedFields(head, version, clusterBits, file);
  const headerLength = version === 2 ? V2_HEADER_LENGTH : checkedHeaderLength(head, clusterSize, file);
  if (version === 3) readV3Fields(head, headerLength, header);
  const backingOffset = readBackingName(head, clusterSize, header, file);
  readExtensions(head, headerLength, backingOffset || head.length, header, file);
  return header;
}

function parseFixedFields(head: Buffer, version: 2 | 3, clusterBits: number, file: ImageFile): Qcow2Header {
  const virtualSize = head.readBigUInt64BE(24);
  if (virtualSize > BigInt(Number.MAX_SAFE_INTEGER)) throw file.unsupported(`a virtual size of ${virtualSize} bytes (above 2^53)`);
  return {
    version,
    clusterBits,
    clusterSize: 2 ** clusterBits,
    virtualSize: Number(virtualSize),
    cryptMethod: head.readUInt32BE(32),
    l1Size: head.readUInt32BE(36),
    l1TableOffset: safeOffset(head.readBigUInt64BE(40), 'l1_table_offset', file),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    compressionType: 0,
    featureNames: new Map(),
  };
}

function checkedHeaderLength(head: Buffer, clusterSize: number, file: ImageFile): number {
  if (head.length < V3_MIN_HEADER_LENGTH) throw file.corrupt('the file ends inside its version 3 header');
  const length = head.readUInt32BE(100);
  if (length < V3_MIN_HEADER_LENGTH || length % 8 !== 0 || length > Math.min(clusterSize, head.length)) {
    throw file.corrupt(`header_length ${length} at file offset 100 is not a multiple of 8 between 104 and the cluster size`);
  }
  return length;
}

function readV3Fields(head: Buffer, headerLength: number, h: Qcow2Header): void {
  h.incompatible = head.readBigUInt64BE(72);
  h.compatible = head.readBigUInt64BE(80);
  h.autoclear = head.readBigUInt64BE(88);
  // An additional field is present only when the header is long enough to hold it.
  if (headerLength > 104) h.compressionType = head.readUInt8(104);
}

/** Returns the file offset of the backing file name, 0 when there is none. */
function readBackingName(head: Buffer, clusterSize: number, h: Qcow2Header, file: ImageFile): number {
  const offset = safeOffset(head.readBigUInt64BE(8), 'backing_file_offset', file);
  if (offset === 0) return 0;
  const length = head.readUInt32BE(16);
  if (length === 0 || length > MAX_BACKING_NAME) {
    throw file.corrupt(`backing_file_size ${length} at file offset 16 is not between 1 and ${MAX_BACKING_NAME}`);
  }
  if (offset + length > Math.min(clusterSize, head.length)) {
    throw file.corrupt(`the backing file name at file offset ${offset} (${length} bytes) lies outside the first cluster`);
  }
  h.backingFile = head.toString('utf8', offset, offset + length);
  return offset;
}

/**
 * Walks the header extensions between the header and `end` (the backing file name, or the end of
 * the first cluster). Unknown extensions are skipped, as the spec allows.
 */
function readExtensions(head: Buffer, start: number, end: number, h: Qcow2Header, file: ImageFile): void {
  let pos = start;
  while (pos + 8 <= end) {
    const type = head.readUInt32BE(pos);
    const length = head.readUInt32BE(pos + 4);
    if (type === EXT_END) return;
    const data = pos + 8;
    if (length > end - data) {
      throw file.corrupt(`header extension 0x${type.toString(16)} at file offset ${pos} (${length} bytes) runs past ${end}`);
    }
    applyExtension(type, head.subarray(data, data + length), h);
    pos = data + Math.ceil(length / 8) * 8;
  }
}

function applyExtension(type: number, data: Buffer, h: Qcow2Header): void {
  if (type === EXT_BACKING_FORMAT) h.backingFormat = data.toString('utf8');
  else if (type === EXT_DATA_FILE) h.dataFile = data.toString('utf8');
  else if (type === EXT_FEATURE_NAMES) {
    for (let at = 0; at + FEATURE_ENTRY <= data.length; at += FEATURE_ENTRY) {
      const kind = FEATURE_TYPES[data[at]];
      const name = data.toString('utf8', at + 2, at + FEATURE_ENTRY).replace(/\0.*$/s, '');
      if (kind !== undefined && name) h.featureNames.set(`${kind}:${data[at + 1]}`, name);
    }
  }
}

function safeOffset(value: bigint, field: string, file: ImageFile): number {
  if (value > BigInt(file.size)) throw file.corrupt(`${field} ${value} lies past the end of the file (${file.size} bytes)`);
  return Number(value);
}

/** What `checkQcow2Features` found that the caller should say, though it does not stop reading. */
export interface Qcow2Notes {
  /** The dirty bit is set: the image was left open for writing (a crashed or running QEMU). */
  dirty: boolean;
  /** Subclusters (extended L2 entries) are in use. */
  extendedL2: boolean;
}

/**
 * Refuses, with TRANSPORT_UNSUPPORTED_FORMAT naming the image and the feature, every image whose
 * guest data this reader could get wrong. Unknown incompatible bits are refused as the spec demands;
 * the feature name table, when the image has one, supplies their names.
 *
 * The dirty bit is accepted: the spec ties it to refcounts only ("refcounts may be inconsistent"),
 * and reading never looks at refcounts, only at the L1/L2 tables; QEMU itself opens dirty images
 * read-only without repairing them.
 */
export function checkQcow2Features(h: Qcow2Header, file: ImageFile): Qcow2Notes {
  if (h.cryptMethod !== 0) {
    throw file.unsupported(`encryption (crypt_method ${h.cryptMethod}, ${CRYPT_METHODS[h.cryptMethod] ?? 'unknown method'})`);
  }
  if (has(h, INCOMPATIBLE.corrupt)) {
    throw file.unsupported('the corrupt bit (QEMU found its metadata inconsistent; check it with `qemu-img check`)');
  }
  if (has(h, INCOMPATIBLE.externalData)) {
    throw file.unsupported(`an external data file (${h.dataFile ?? 'name not recorded'})`);
  }
  checkCompression(h, file);
  const unknown = unknownBits(h.incompatible);
  if (unknown.length > 0) {
    const names = unknown.map((bit) => `bit ${bit}${nameOf(h, bit)}`).join(', ');
    throw file.unsupported(`unknown incompatible feature ${names}`);
  }
  if (has(h, INCOMPATIBLE.extendedL2) && h.clusterBits < 14) {
    throw file.corrupt(`extended L2 entries need clusters of at least 16 KiB, the image has 2^${h.clusterBits}`);
  }
  return { dirty: has(h, INCOMPATIBLE.dirty), extendedL2: has(h, INCOMPATIBLE.extendedL2) };
}

function checkCompression(h: Qcow2Header, file: ImageFile): void {
  const flagged = has(h, INCOMPATIBLE.compressionType);
  if (!flagged && h.compressionType === COMPRESSION_ZLIB) return;
  if (flagged && h.compressionType === COMPRESSION_ZSTD) {
    throw file.unsupported('zstd compression (compression_type 1; Node 20 has no zstd, convert with compression_type=zlib)');
  }
  if (!flagged || h.compressionType === COMPRESSION_ZLIB) {
    throw file.corrupt(`compression_type ${h.compressionType} does not match the compression type feature bit`);
  }
  throw file.unsupported(`compression type ${h.compressionType}`);
}

function unknownBits(mask: bigint): number[] {
  const out: number[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    if ((mask >> bit) & 1n && !KNOWN_INCOMPATIBLE.includes(bit)) out.push(Number(bit));
  }
  return out;
}

function nameOf(h: Qcow2Header, bit: number): string {
  const name = h.featureNames.get(`incompatible:${bit}`);
  return name ? ` ("${name}")` : '';
}

function has(h: Qcow2Header, bit: bigint): boolean {
  return ((h.incompatible >> bit) & 1n) === 1n;
}
