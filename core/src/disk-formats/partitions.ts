import { FerryError } from '../errors.js';
import { crc32 } from '../util/checksums.js';
import { type DiskReader, readExactly } from './disk-reader.js';
import { formatGuid, gptTypeName, mbrTypeName } from './partition-types.js';

/**
 * MBR and GPT partition tables, read from a disk through a `DiskReader`.
 *
 * MBR: the 4 primary slots of sector 0 (boot flag 0x00 or 0x80, type byte, 32-bit LBA start and
 * count), and behind an extended slot (type 0x05, 0x0f, 0x85) the chain of extended boot records:
 * each EBR holds one logical partition (start relative to the EBR) and a link to the next EBR
 * (relative to the extended partition's start). Logical partitions are numbered from 5, as Linux does.
 *
 * GPT (UEFI spec, chapter 5): a protective MBR (a slot of type 0xee) and the header at LBA 1
 * ("EFI PART", header CRC-32 over `headerSize` bytes with the CRC field zeroed), then the entry array
 * (CRC-32 over `count * entrySize` bytes). When the primary header or its entries fail their checks,
 * the backup header at the header's alternate LBA (or the disk's last sector) is used and the table
 * says so in `warnings`; when both fail, `DISK_FORMAT_INVALID`.
 *
 * A disk with no 0x55aa signature, or whose sector 0 is a file system's boot sector (NTFS, FAT,
 * exFAT) or has a boot flag other than 0x00/0x80, has no partition table: `scheme: 'none'`.
 */

export interface Partition {
  /** 1-based number as Linux names it (`sda1`): GPT entry slot + 1; MBR slots 1-4, logical from 5. */
  index: number;
  /** Byte offset of the first byte on the disk. */
  start: number;
  /** Length in bytes. */
  size: number;
  /** MBR: the type byte as `0x82`; GPT: the type GUID, lower case. */
  type: string;
  /** A known name for `type` (`linux`, `linux-swap`, `ntfs`, `microsoft-basic-data`, `efi`, `extended`, ...) or `unknown`. */
  typeName: string;
  /** GPT only: the partition's name (UTF-16LE in the entry) and its unique GUID. */
  name?: string;
  uuid?: string;
  /** MBR only: the boot flag (0x80) is set. */
  bootable?: boolean;
  /** MBR only: a logical partition inside the extended one. */
  logical?: boolean;
}

export interface PartitionTable {
  scheme: 'mbr' | 'gpt' | 'none';
  /** The logical sector size the table was read with. */
  sectorSize: number;
  /** MBR: the 32-bit disk signature as 8 hex digits; GPT: the disk GUID. */
  diskId?: string;
  partitions: Partition[];
  /** Things that were wrong but did not stop the read (a damaged primary GPT header, a bad backup). */
  warnings: string[];
}

export interface ReadPartitionsOptions {
  /** Logical sector size; default 512. GPT is also looked for at 4096 when not found at 512. */
  sectorSize?: number;
}

const MAX_LOGICAL = 256;
const MAX_GPT_ENTRIES = 16384;
const EXTENDED_TYPES = new Set([0x05, 0x0f, 0x85]);

/** Reads the partition table of a disk of `diskSize` bytes. Malformed tables: `DISK_FORMAT_INVALID`. */
export async function readPartitionTable(read: DiskReader, diskSize: number, options: ReadPartitionsOptions = {}): Promise<PartitionTable> {
  const sectorSize = options.sectorSize ?? 512;
  if (!Number.isSafeInteger(diskSize) || diskSize < 0) throw invalid('disk', `size ${diskSize} is not a byte count`, 0);
  if (diskSize < 512) return { scheme: 'none', sectorSize, partitions: [], warnings: [] };
  const mbr = await readExactly(read, 0, 512, 'MBR');
  if (!isMbr(mbr)) return { scheme: 'none', sectorSize, partitions: [], warnings: [] };
  const slots = mbrSlots(mbr);
  if (slots.some((s) => s.type === 0xee)) {
    for (const size of sectorSize === 512 ? [512, 4096] : [sectorSize]) {
      if (diskSize < 2 * size) continue;
      const lba1 = await readExactly(read, size, 8, 'GPT header signature');
      if (Buffer.from(lba1).toString('latin1') === 'EFI PART') return readGpt(read, diskSize, size);
    }
    // A protective MBR whose GPT is gone: look for the backup header in the last sector.
    return readGpt(read, diskSize, sectorSize);
  }
  return readMbr(read, diskSize, sectorSize, mbr, slots);
}

interface MbrSlot {
  slot: number;
  status: number;
  type: number;
  lbaStart: number;
  lbaCount: number;
}

function isMbr(sector: Uint8Array): boolean {
  if (sector[510] !== 0x55 || sector[511] !== 0xaa) return false;
  const oem = Buffer.from(sector.subarray(3, 11)).toString('latin1');
  if (oem === 'NTFS    ' || oem === 'EXFAT   ') return false;
  const fat = Buffer.from(sector.subarray(0x36, 0x3e)).toString('latin1');
  const fat32 = Buffer.from(sector.subarray(0x52, 0x5a)).toString('latin1');
  if (fat.startsWith('FAT') || fat32.startsWith('FAT32')) return false;
  for (let i = 0; i < 4; i++) {
    const status = sector[446 + i * 16]!;
    if (status !== 0x00 && status !== 0x80) return false;
  }
  return true;
}

function mbrSlots(sector: Uint8Array, count = 4): MbrSlot[] {
  const view = new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
  const slots: MbrSlot[] = [];
  for (let i = 0; i < count; i++) {
    const at = 446 + i * 16;
    const type = sector[at + 4]!;
    const lbaStart = view.getUint32(at + 8, true);
    const lbaCount = view.getUint32(at + 12, true);
    if (type === 0 || lbaCount === 0) continue;
    slots.push({ slot: i + 1, status: sector[at]!, type, lbaStart, lbaCount });
  }
  return slots;
}

async function readMbr(read: DiskReader, diskSize: number, sectorSize: number, mbr: Uint8Array, slots: MbrSlot[]): Promise<PartitionTable> {
  const diskId = Buffer.from(mbr.subarray(440, 444)).reverse().toString('hex');
  const partitions: Partition[] = [];
  const warnings: string[] = [];
  for (const s of slots) {
    const p = mbrPartition(s, s.slot, s.lbaStart * sectorSize, s.lbaCount * sectorSize, false);
    checkInside(p, diskSize, `MBR slot ${s.slot}`, 446 + (s.slot - 1) * 16);
    partitions.push(p);
  }
  const extended = slots.filter((s) => EXTENDED_TYPES.has(s.type));
  if (extended.length > 1) throw invalid('MBR', `${extended.length} extended partitions (at most one is allowed)`, 446);
  if (extended[0]) partitions.push(...(await readLogical(read, diskSize, sectorSize, extended[0])));
  checkNoOverlap(partitions.filter((p) => p.typeName !== 'extended'), 'MBR');
  return { scheme: 'mbr', sectorSize, diskId, partitions, warnings };
}

async function readLogical(read: DiskReader, diskSize: number, sectorSize: number, ext: MbrSlot): Promise<Partition[]> {
  const extStart = ext.lbaStart * sectorSize;
  const extEnd = extStart + ext.lbaCount * sectorSize;
  const out: Partition[] = [];
  const seen = new Set<number>();
  let ebr = extStart;
  for (let n = 0; ; n++) {
    if (n >= MAX_LOGICAL) throw invalid('extended partition', `more than ${MAX_LOGICAL} logical partitions`, ebr);
    if (seen.has(ebr)) throw invalid('extended partition', `the EBR chain loops back to offset ${ebr}`, ebr);
    if (ebr < extStart || ebr + 512 > extEnd) throw invalid('EBR', `at ${ebr}, outside the extended partition ${extStart}-${extEnd}`, ebr);
    seen.add(ebr);
    const sector = await readExactly(read, ebr, 512, 'EBR');
    if (sector[510] !== 0x55 || sector[511] !== 0xaa) {
      if (n === 0) return out; // an empty extended partition
      throw invalid('EBR', 'no 0x55aa signature', ebr + 510);
    }
    const [first, link] = [mbrSlotAt(sector, 0), mbrSlotAt(sector, 1)];
    if (first) {
      const p = mbrPartition(first, 5 + out.length, ebr + first.lbaStart * sectorSize, first.lbaCount * sectorSize, true);
      checkInside(p, diskSize, `logical partition ${p.index}`, ebr + 446);
      if (p.start < extStart || p.start + p.size > extEnd) throw invalid(`logical partition ${p.index}`, 'lies outside the extended partition', ebr + 446);
      out.push(p);
    }
    if (!link || !EXTENDED_TYPES.has(link.type)) return out;
    ebr = extStart + link.lbaStart * sectorSize;
  }
}

function mbrSlotAt(sector: Uint8Array, i: number): MbrSlot | undefined {
  return mbrSlots(sector, 2).find((s) => s.slot === i + 1);
}

function mbrPartition(s: MbrSlot, index: number, start: number, size: number, logical: boolean): Partition {
  const type = `0x${s.type.toString(16).padStart(2, '0')}`;
  const p: Partition = { index, start, size, type, typeName: mbrTypeName(s.type), bootable: s.status === 0x80 };
  if (logical) p.logical = true;
  return p;
}

interface GptHeader {
  myLba: number;
  alternateLba: number;
  firstUsable: number;
  lastUsable: number;
  diskGuid: string;
  entriesLba: number;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

async function readGpt(read: DiskReader, diskSize: number, sectorSize: number): Promise<PartitionTable> {
  const lastLba = Math.floor(diskSize / sectorSize) - 1;
  const warnings: string[] = [];
  let primaryError: FerryError | undefined;
  try {
    const header = await readGptHeader(read, diskSize, sectorSize, 1);
    const partitions = await readGptEntries(read, diskSize, sectorSize, header);
    try {
      await readGptHeader(read, diskSize, sectorSize, header.alternateLba);
    } catch (err) {
      warnings.push(`backup GPT header unusable: ${(err as Error).message}`);
    }
    return { scheme: 'gpt', sectorSize, diskId: header.diskGuid, partitions, warnings };
  } catch (err) {
    if (!(err instanceof FerryError)) throw err;
    primaryError = err;
  }
  try {
    const header = await readGptHeader(read, diskSize, sectorSize, lastLba);
    const partitions = await readGptEntries(read, diskSize, sectorSize, header);
    warnings.push(`primary GPT unusable, read the backup at LBA ${lastLba}: ${primaryError.message}`);
    return { scheme: 'gpt', sectorSize, diskId: header.diskGuid, partitions, warnings };
  } catch (err) {
    if (!(err instanceof FerryError)) throw err;
    throw new FerryError('DISK_FORMAT_INVALID', `GPT: neither the primary nor the backup table is usable (primary: ${primaryError.detail}; backup: ${err.detail})`, primaryError.where);
  }
}

async function readGptHeader(read: DiskReader, diskSize: number, sectorSize: number, lba: number): Promise<GptHeader> {
  const at = lba * sectorSize;
  const what = `GPT header at LBA ${lba}`;
  if (lba < 1 || at + sectorSize > diskSize) throw invalid(what, 'lies past the end of the disk', at);
  const sector = await readExactly(read, at, sectorSize, what);
  const view = new DataView(sector.buffer, sector.byteOffset, sector.byteLength);
  if (Buffer.from(sector.subarray(0, 8)).toString('latin1') !== 'EFI PART') throw invalid(what, 'no "EFI PART" signature', at);
  const headerSize = view.getUint32(12, true);
  if (headerSize < 92 || headerSize > sectorSize) throw invalid(what, `header size ${headerSize} outside 92-${sectorSize}`, at + 12);
  const stored = view.getUint32(16, true);
  const copy = Buffer.from(sector.subarray(0, headerSize));
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) throw invalid(what, `header CRC-32 ${hex32(crc32(copy))} does not match the stored ${hex32(stored)}`, at + 16);
  const u64 = (o: number): number => Number(view.getBigUint64(o, true));
  const h: GptHeader = {
    myLba: u64(24),
    alternateLba: u64(32),
    firstUsable: u64(40),
    lastUsable: u64(48),
    diskGuid: formatGuid(sector.subarray(56, 72)),
    entriesLba: u64(72),
    entryCount: view.getUint32(80, true),
    entrySize: view.getUint32(84, true),
    entriesCrc: view.getUint32(88, true),
  };
  const lastLba = Math.floor(diskSize / sectorSize) - 1;
  if (h.myLba !== lba) throw invalid(what, `names itself LBA ${h.myLba}`, at + 24);
  if (h.firstUsable > h.lastUsable + 1 || h.lastUsable > lastLba) throw invalid(what, `usable LBAs ${h.firstUsable}-${h.lastUsable} outside the disk's 0-${lastLba}`, at + 40);
  if (h.entrySize < 128 || h.entrySize % 8 !== 0 || h.entrySize > 4096) throw invalid(what, `entry size ${h.entrySize} is not a multiple of 8 in 128-4096`, at + 84);
  if (h.entryCount > MAX_GPT_ENTRIES) throw invalid(what, `${h.entryCount} entries (more than ${MAX_GPT_ENTRIES})`, at + 80);
  const arrayEnd = h.entriesLba * sectorSize + h.entryCount * h.entrySize;
  if (h.entriesLba < 1 || arrayEnd > diskSize) throw invalid(what, `entry array at LBA ${h.entriesLba} runs past the end of the disk`, at + 72);
  return h;
}

async function readGptEntries(read: DiskReader, diskSize: number, sectorSize: number, h: GptHeader): Promise<Partition[]> {
  const at = h.entriesLba * sectorSize;
  const bytes = await readExactly(read, at, h.entryCount * h.entrySize, `GPT entry array at LBA ${h.entriesLba}`);
  const actual = crc32(bytes);
  if (actual !== h.entriesCrc) throw invalid(`GPT entry array at LBA ${h.entriesLba}`, `CRC-32 ${hex32(actual)} does not match the header's ${hex32(h.entriesCrc)}`, at);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: Partition[] = [];
  for (let i = 0; i < h.entryCount; i++) {
    const o = i * h.entrySize;
    const typeBytes = bytes.subarray(o, o + 16);
    if (typeBytes.every((b) => b === 0)) continue;
    const first = Number(view.getBigUint64(o + 32, true));
    const last = Number(view.getBigUint64(o + 40, true));
    const where = at + o;
    if (last < first) throw invalid(`GPT entry ${i + 1}`, `last LBA ${last} before first LBA ${first}`, where + 32);
    if (first < h.firstUsable || last > h.lastUsable) {
      throw invalid(`GPT entry ${i + 1}`, `LBAs ${first}-${last} outside the usable ${h.firstUsable}-${h.lastUsable}`, where + 32);
    }
    const type = formatGuid(typeBytes);
    out.push({
      index: i + 1,
      start: first * sectorSize,
      size: (last - first + 1) * sectorSize,
      type,
      typeName: gptTypeName(type),
      name: utf16Name(bytes.subarray(o + 56, o + Math.min(h.entrySize, 128))),
      uuid: formatGuid(bytes.subarray(o + 16, o + 32)),
    });
  }
  checkNoOverlap(out, 'GPT');
  return out;
}

function utf16Name(bytes: Uint8Array): string {
  const s = Buffer.from(bytes).toString('utf16le');
  const nul = s.indexOf('\0');
  return nul === -1 ? s : s.slice(0, nul);
}

function checkInside(p: Partition, diskSize: number, what: string, offset: number): void {
  if (p.start + p.size > diskSize) throw invalid(what, `bytes ${p.start}-${p.start + p.size} run past the disk's end at ${diskSize}`, offset);
}

function checkNoOverlap(parts: Partition[], scheme: string): void {
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  for (let i = 1; i < sorted.length; i++) {
    const [a, b] = [sorted[i - 1]!, sorted[i]!];
    if (b.start < a.start + a.size) throw invalid(`${scheme} partitions ${a.index} and ${b.index}`, `overlap at byte ${b.start}`, b.start);
  }
}

function hex32(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}

function invalid(what: string, detail: string, offset: number): FerryError {
  return new FerryError('DISK_FORMAT_INVALID', `${what}: ${detail}`, { offset });
}
