import { FerryError } from '../errors.js';
import { type DiskReader, sliceReader } from './disk-reader.js';
import { NtfsVolume } from './ntfs.js';
import { readPartitionTable } from './partitions.js';
import { probeSwap } from './swap.js';

/**
 * Finds, from a disk's own bytes, the areas whose content a guest does not need back: Linux swap
 * areas (whole disk or partitions of an MBR or GPT table) and Windows' `pagefile.sys`,
 * `swapfile.sys` and `hiberfil.sys` in the root of NTFS volumes. What must stay is kept:
 * - the first page of a Linux swap area (its header: a restored swap area is valid for `swapon`
 *   and `blkid` without `mkswap`);
 * - a Linux swap area holding a hibernation image, and a `hiberfil.sys` whose header says it holds
 *   one to resume from (`hibr`/`HIBR`, `rstr`/`RSTR`): a guest that was hibernated needs it to resume.
 * Structures that cannot be read (a malformed partition table or file system) are left alone and
 * named in `notes`: the areas found elsewhere still count, and nothing is guessed.
 */

export type SwapAreaKind = 'linux-swap' | 'pagefile' | 'swapfile' | 'hiberfil';

export interface SwapAreaFound {
  kind: SwapAreaKind;
  /** Where it was found, for reports: `partition 2 (linux-swap)`, `partition 3: /pagefile.sys`. */
  where: string;
  /** Disk byte ranges whose content is not needed, in offset order. */
  extents: { offset: number; length: number }[];
}

export interface SwapAreaOptions {
  /** Linux swap areas; default true. */
  linuxSwap?: boolean;
  /** `pagefile.sys` and `swapfile.sys` in NTFS roots; default true. */
  windowsPaging?: boolean;
  /** `hiberfil.sys` in NTFS roots (unless it holds an image to resume from); default true. */
  hibernation?: boolean;
  /**
   * Which partitions count as Linux swap: `signature` (default) any partition, or the whole disk,
   * with a valid swap header, whatever its type; `both` only partitions of type linux-swap with a
   * valid header; `type` partitions of type linux-swap even without a header (then wholly skipped),
   * plus any other with a valid header.
   */
  swapMatch?: 'signature' | 'both' | 'type';
}

interface Volume {
  start: number;
  size: number;
  label: string;
  typeName?: string;
}

const PAGING_FILES: [string, SwapAreaKind][] = [
  ['pagefile.sys', 'pagefile'],
  ['swapfile.sys', 'swapfile'],
  ['hiberfil.sys', 'hiberfil'],
];

export async function findSwapAreas(read: DiskReader, size: number, options: SwapAreaOptions = {}, notes: string[] = []): Promise<SwapAreaFound[]> {
  const opts = { linuxSwap: true, windowsPaging: true, hibernation: true, swapMatch: 'signature' as const, ...options };
  const found: SwapAreaFound[] = [];
  let volumes: Volume[];
  try {
    const table = await readPartitionTable(read, size);
    notes.push(...table.warnings);
    volumes =
      table.scheme === 'none'
        ? [{ start: 0, size, label: 'whole disk' }]
        : table.partitions
            .filter((p) => p.typeName !== 'extended' && p.typeName !== 'gpt-protective')
            .map((p) => ({ start: p.start, size: p.size, label: `partition ${p.index} (${p.typeName})`, typeName: p.typeName }));
  } catch (err) {
    if (!isFormatError(err)) throw err;
    notes.push(`partition table not read, nothing skipped: ${err.message}`);
    return [];
  }
  for (const v of volumes) {
    const at = sliceReader(read, v.start);
    try {
      if (opts.linuxSwap) {
        const area = await linuxSwap(at, v, opts.swapMatch, notes);
        if (area) {
          found.push(area);
          continue;
        }
      }
      if ((opts.windowsPaging || opts.hibernation) && (await NtfsVolume.probe(at, v.size))) {
        found.push(...(await pagingFiles(at, v, opts, notes)));
      }
    } catch (err) {
      if (!isFormatError(err)) throw err;
      notes.push(`${v.label}: not read, nothing skipped there: ${err.message}`);
    }
  }
  return found;
}

async function linuxSwap(read: DiskReader, v: Volume, match: 'signature' | 'both' | 'type', notes: string[]): Promise<SwapAreaFound | undefined> {
  const typed = v.typeName === 'linux-swap';
  const probe = await probeSwap(read, v.size);
  if (probe.kind === 'hibernated') {
    notes.push(`${v.label}: a swap area holding a hibernation image (${probe.signature}): kept`);
    return undefined;
  }
  if (probe.kind === 'swap') {
    if (match === 'both' && !typed) return undefined;
    const extents = probe.size > probe.headerSize ? [{ offset: v.start + probe.headerSize, length: probe.size - probe.headerSize }] : [];
    return { kind: 'linux-swap', where: v.label, extents };
  }
  if (typed && match === 'type') return { kind: 'linux-swap', where: `${v.label}, no swap header`, extents: [{ offset: v.start, length: v.size }] };
  if (typed) notes.push(`${v.label}: typed linux-swap but holds no swap header: kept`);
  return undefined;
}

async function pagingFiles(read: DiskReader, v: Volume, opts: Required<SwapAreaOptions>, notes: string[]): Promise<SwapAreaFound[]> {
  const volume = await NtfsVolume.open(read, v.size);
  const out: SwapAreaFound[] = [];
  for (const [name, kind] of PAGING_FILES) {
    if (kind === 'hiberfil' ? !opts.hibernation : !opts.windowsPaging) continue;
    try {
      const area = await pagingFile(volume, name, kind, v, notes);
      if (area) out.push(area);
    } catch (err) {
      // One unreadable file (a damaged record, a compressed hiberfil.sys) keeps the others skippable.
      if (!isFormatError(err)) throw err;
      notes.push(`${v.label}: /${name} not read, kept: ${err.message}`);
    }
  }
  return out;
}

async function pagingFile(volume: NtfsVolume, name: string, kind: SwapAreaKind, v: Volume, notes: string[]): Promise<SwapAreaFound | undefined> {
  let entry;
  try {
    entry = await volume.stat(`/${name}`);
  } catch (err) {
    if (err instanceof FerryError && err.code === 'DISK_PATH_NOT_FOUND') return undefined;
    throw err;
  }
  if (entry.isDirectory) return undefined;
  if (kind === 'hiberfil') {
    const magic = Buffer.from(await volume.readFile(entry, 0, 4)).toString('latin1').toLowerCase();
    if (magic === 'hibr' || magic === 'rstr') {
      notes.push(`${v.label}: /${entry.name} holds a hibernation image to resume from (${magic}): kept`);
      return undefined;
    }
  }
  const extents = (await volume.extents(entry)).map((e) => ({ offset: v.start + e.volumeOffset, length: e.length }));
  return { kind, where: `${v.label}: /${entry.name}`, extents: extents.sort((a, b) => a.offset - b.offset) };
}

function isFormatError(err: unknown): err is FerryError {
  return err instanceof FerryError && (err.code === 'DISK_FORMAT_INVALID' || err.code === 'DISK_FORMAT_UNSUPPORTED');
}
