import { FerryError } from '../errors.js';
import { type DiskReader, readExactly } from './disk-reader.js';

/**
 * Linux swap areas (`include/linux/swap.h`, `union swap_header`). The first page of the area is the
 * header: 1024 bytes of boot bits, then `version` (u32), `last_page` (u32, index of the last usable
 * page), `nr_badpages` (u32), a 16-byte UUID, a 16-byte label; the page's last 10 bytes are the magic
 * `SWAPSPACE2` (version 1) or `SWAP-SPACE` (version 0, before Linux 2.2). The page size is the one of
 * the machine that ran `mkswap`, so each common page size is tried; the fields are in that machine's
 * byte order, found from `version`.
 *
 * A swap area that holds a hibernation image carries another magic in the same place (`S1SUSPEND`,
 * `S2SUSPEND`, `ULSUSPEND`, `LINHIB0001`): its pages are the saved memory the guest resumes from, so
 * it is reported as `hibernated`, never as swap that can be dropped.
 */

export const SWAP_PAGE_SIZES = [4096, 8192, 16384, 65536] as const;

export interface SwapArea {
  kind: 'swap';
  version: 0 | 1;
  pageSize: number;
  /** Index of the last page the area uses (version 1; for version 0, derived from the bitmap size). */
  lastPage: number;
  /** Bytes the area uses from its start: `(lastPage + 1) * pageSize`, at most the container's size. */
  size: number;
  /** The header page: `[0, pageSize)` of the area. Everything after it is swapped-out memory. */
  headerSize: number;
  badPages: number;
  uuid?: string;
  label?: string;
  littleEndian: boolean;
}

export interface HibernatedSwap {
  kind: 'hibernated';
  pageSize: number;
  signature: string;
}

export type SwapProbe = SwapArea | HibernatedSwap | { kind: 'none' };

const HIBERNATION = ['S1SUSPEND', 'S2SUSPEND', 'ULSUSPEND', 'LINHIB0001'];

/**
 * Looks for a swap header at the start of a partition or disk of `size` bytes. `none` when no
 * magic is there; a magic with an impossible header (version, last page of 0) is `DISK_FORMAT_INVALID`.
 */
export async function probeSwap(read: DiskReader, size: number): Promise<SwapProbe> {
  const fits = SWAP_PAGE_SIZES.filter((p) => p <= size);
  if (fits.length === 0) return { kind: 'none' };
  const head = await readExactly(read, 0, fits[fits.length - 1]!, 'swap header');
  for (const pageSize of fits) {
    const tail = Buffer.from(head.subarray(pageSize - 10, pageSize)).toString('latin1');
    if (tail === 'SWAPSPACE2') return parseV1(head, pageSize, size);
    if (tail === 'SWAP-SPACE') return parseV0(head, pageSize, size);
    const hib = HIBERNATION.find((m) => tail.endsWith(m) || tail.startsWith(m));
    if (hib) return { kind: 'hibernated', pageSize, signature: hib };
  }
  return { kind: 'none' };
}

function parseV1(head: Uint8Array, pageSize: number, size: number): SwapArea {
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const le = view.getUint32(1024, true) === 1;
  if (!le && view.getUint32(1024, false) !== 1) {
    throw new FerryError('DISK_FORMAT_INVALID', `swap header: SWAPSPACE2 magic with version ${view.getUint32(1024, true)} (expected 1)`, { offset: 1024 });
  }
  const lastPage = view.getUint32(1028, le);
  const badPages = view.getUint32(1032, le);
  if (lastPage === 0) throw new FerryError('DISK_FORMAT_INVALID', 'swap header: last_page is 0', { offset: 1028 });
  const uuidBytes = Buffer.from(head.subarray(1036, 1052));
  const labelBytes = Buffer.from(head.subarray(1052, 1068));
  const nul = labelBytes.indexOf(0);
  const label = labelBytes.subarray(0, nul === -1 ? 16 : nul).toString('utf8');
  const area: SwapArea = {
    kind: 'swap',
    version: 1,
    pageSize,
    lastPage,
    size: Math.min(size - (size % pageSize), (lastPage + 1) * pageSize),
    headerSize: pageSize,
    badPages,
    littleEndian: le,
  };
  if (!uuidBytes.every((b) => b === 0)) area.uuid = formatUuid(uuidBytes);
  if (label) area.label = label;
  return area;
}

/** Version 0: the header page is a bitmap of usable pages (bit 0 = page 0), up to the magic. */
function parseV0(head: Uint8Array, pageSize: number, size: number): SwapArea {
  let lastPage = 0;
  for (let bit = 1; bit < (pageSize - 10) * 8; bit++) {
    if (head[bit >> 3]! & (1 << (bit & 7))) lastPage = bit;
  }
  if (lastPage === 0) throw new FerryError('DISK_FORMAT_INVALID', 'swap header (SWAP-SPACE): no usable page in the bitmap', { offset: 0 });
  return {
    kind: 'swap',
    version: 0,
    pageSize,
    lastPage,
    size: Math.min(size - (size % pageSize), (lastPage + 1) * pageSize),
    headerSize: pageSize,
    badPages: 0,
    littleEndian: true,
  };
}

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
