import type { Extent } from '@ferry/core/plugin';

/** The page at the start of every swap area holding its header: kept, so a restored swap area stays valid. */
export const SWAP_HEADER_BYTES = 4096;

/** One guest disk with the swap ranges on it (bytes from the disk's start). */
export interface GuestDiskSwap {
  disk: string;
  sizeBytes: number;
  extents: Extent[];
}

/**
 * Reads the runtime's `swaps` output (runtime-script.ts) into swap ranges per guest disk, each swap
 * area without its first page (the header), adjacent ranges merged. `problems` names the areas
 * that could not be placed (a mapped device, no filefrag, a file extent without a known place).
 */
export function parseSwaps(text: string): { disks: GuestDiskSwap[]; problems: string[] } {
  const byDisk = new Map<string, GuestDiskSwap>();
  const problems: string[] = [];
  const diskOf = (name: string, sectors: string): GuestDiskSwap => {
    let d = byDisk.get(name);
    if (!d) byDisk.set(name, (d = { disk: name, sizeBytes: Number(sectors) * 512, extents: [] }));
    return d;
  };
  let file: { d: GuestDiskSwap; start: number; blockSize: number; path: string } | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('|')) {
      if (!file) continue;
      const body = line.slice(1);
      const size = /is \d+ \(\d+ blocks of (\d+) bytes\)/.exec(body);
      if (size) file.blockSize = Number(size[1]);
      // "   0:        0..    2047:      34816..     36863:   2048:             last,eof"
      const ext = /^\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+)\.\.\s*\d+:\s*(\d+):.*?([a-z_,]*)\s*$/.exec(body);
      if (ext) {
        const [logical, physical, length] = [Number(ext[1]), Number(ext[2]), Number(ext[3])];
        if (/unknown_loc|delalloc|inline|encoded/.test(ext[4])) {
          problems.push(`swap file ${file.path}: an extent has no fixed place on the disk (${ext[4]})`);
          continue;
        }
        let offset = file.start + physical * file.blockSize;
        let bytes = length * file.blockSize;
        if (logical === 0) {
          offset += SWAP_HEADER_BYTES;
          bytes -= SWAP_HEADER_BYTES;
        }
        if (bytes > 0) file.d.extents.push({ offset, length: bytes });
      }
      continue;
    }
    const w = line.trim().split(/\s+/);
    file = undefined;
    if (w[0] === 'part' && w.length >= 5) {
      const d = diskOf(w[1], w[2]);
      const start = Number(w[3]) * 512;
      const bytes = Number(w[4]) * 512;
      if (bytes > SWAP_HEADER_BYTES) d.extents.push({ offset: start + SWAP_HEADER_BYTES, length: bytes - SWAP_HEADER_BYTES });
    } else if (w[0] === 'file' && w.length >= 5) {
      file = { d: diskOf(w[1], w[2]), start: Number(w[3]) * 512, blockSize: 4096, path: w.slice(4).join(' ') };
    } else if (w[0] === 'unknown') {
      problems.push(`swap ${w.slice(1).join(' ')}`);
    }
  }
  for (const d of byDisk.values()) d.extents = merge(d.extents);
  return { disks: [...byDisk.values()].filter((d) => d.extents.length), problems };
}

/** Sorted, with touching or overlapping ranges joined (a block is skipped only inside one range). */
export function merge(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of [...extents].sort((a, b) => a.offset - b.offset)) {
    const last = out.at(-1);
    if (last && e.offset <= last.offset + last.length) last.length = Math.max(last.length, e.offset + e.length - last.offset);
    else out.push({ ...e });
  }
  return out;
}

/**
 * The guest disk that is the VM's disk `disk`: the one of the same size. Undefined when the size is
 * unknown or several guest disks have it (the guest's names say nothing of the host's).
 */
export function matchDisk(disks: GuestDiskSwap[], disk: { name: string; size?: number }): GuestDiskSwap | undefined {
  if (disk.size === undefined) return undefined;
  const same = disks.filter((d) => d.sizeBytes === disk.size);
  return same.length === 1 ? same[0] : undefined;
}
