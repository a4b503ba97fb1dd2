import { compressedExtent, type CompressedExtent } from './compressed-cluster.js';
import type { ImageFile } from './image-file.js';
import { LruCache } from './lru-cache.js';
import type { Qcow2Header } from './qcow2-header.js';

/**
 * A run of guest bytes `[offset, offset+length)` that one qcow2 layer stores the same way:
 * - `data`: in the image file, contiguously from file offset `host`;
 * - `zero`: reads as zeros (zero flag or zero subcluster), the backing file is not consulted;
 * - `unallocated`: not in this layer, read from the backing file (zeros without one);
 * - `compressed`: inside the compressed cluster starting at guest offset `cluster` (one cluster at most).
 */
export type ClusterRun =
  | { kind: 'data'; offset: number; length: number; host: number }
  | { kind: 'zero' | 'unallocated'; offset: number; length: number }
  | { kind: 'compressed'; offset: number; length: number; cluster: number; extent: CompressedExtent };

/** The smallest stretch the map can describe at once: a cluster, a subcluster, or a whole L2 table's range. */
type Unit =
  | { kind: 'data'; end: number; host: number }
  | { kind: 'zero' | 'unallocated'; end: number }
  | { kind: 'compressed'; end: number; cluster: number; extent: CompressedExtent };

/** QEMU refuses larger active L1 tables; the same bound keeps a hostile l1_size from a huge read. */
const MAX_L1_BYTES = 32 * 1024 * 1024;
/** Memory for cached L2 tables; the entry count is clamped so small clusters still get a useful cache. */
const L2_CACHE_BYTES = 4 * 1024 * 1024;
const SUBCLUSTERS = 32;

/**
 * The guest-to-host mapping of one qcow2 image: the active L1 table, held in memory, and L2 tables
 * loaded on demand into a small bounded cache. Standard and extended (subcluster) L2 entries.
 */
export class ClusterMap {
  private readonly clusterSize: number;
  private readonly entryBytes: number;
  /** Guest bytes one L2 table maps. */
  private readonly l2Range: number;
  private readonly l2Cache: LruCache<number, Buffer>;

  private constructor(
    private readonly file: ImageFile,
    private readonly header: Qcow2Header,
    private readonly l1: Buffer,
    private readonly extended: boolean,
  ) {
    this.clusterSize = header.clusterSize;
    this.entryBytes = extended ? 16 : 8;
    this.l2Range = (this.clusterSize / this.entryBytes) * this.clusterSize;
    this.l2Cache = new LruCache(Math.min(64, Math.max(4, Math.floor(L2_CACHE_BYTES / this.clusterSize))));
  }

  /** Checks the L1 table's place and size against the header and the file, then loads it. */
  static async open(file: ImageFile, header: Qcow2Header, extended: boolean): Promise<ClusterMap> {
    const { l1Size, l1TableOffset, clusterSize, virtualSize } = header;
    const l2Range = (clusterSize / (extended ? 16 : 8)) * clusterSize;
    const needed = Math.ceil(virtualSize / l2Range);
    if (l1Size < needed) throw file.corrupt(`the L1 table has ${l1Size} entries, the virtual size needs ${needed}`);
    if (l1Size * 8 > MAX_L1_BYTES) throw file.corrupt(`the L1 table has ${l1Size} entries, more than 32 MiB`);
    if (l1Size > 0 && l1TableOffset % clusterSize !== 0) {
      throw file.corrupt(`l1_table_offset ${l1TableOffset} is not aligned to the cluster size (${clusterSize})`);
    }
    const l1 = l1Size === 0 ? Buffer.alloc(0) : await file.read(l1TableOffset, l1Size * 8, 'the L1 table');
    return new ClusterMap(file, header, l1, extended);
  }

  /** The longest run starting at `offset`, at most `maxLength` bytes (> 0), within the virtual size. */
  async run(offset: number, maxLength: number): Promise<ClusterRun> {
    const first = await this.unitAt(offset);
    if (first.kind === 'compressed') {
      const { cluster, extent } = first;
      return { kind: 'compressed', offset, length: Math.min(first.end, offset + maxLength) - offset, cluster, extent };
    }
    const length = await this.extend(offset, maxLength, first, (next, at) =>
      next.kind === first.kind && (next.kind !== 'data' || first.kind !== 'data' || next.host === first.host + (at - offset)),
    );
    return first.kind === 'data' ? { kind: 'data', offset, length, host: first.host } : { kind: first.kind, offset, length };
  }

  /**
   * Like `run`, for block status: allocated clusters, compressed or not and wherever they are in the
   * file, make one `data` run, so a fragmented image is answered in few steps.
   */
  async allocation(offset: number, maxLength: number): Promise<{ kind: 'data' | 'zero' | 'unallocated'; length: number }> {
    const kindOf = (u: Unit): 'data' | 'zero' | 'unallocated' => (u.kind === 'compressed' ? 'data' : u.kind);
    const first = await this.unitAt(offset);
    const length = await this.extend(offset, maxLength, first, (next) => kindOf(next) === kindOf(first));
    return { kind: kindOf(first), length };
  }

  /** Length of the run from `offset` through `first` and the units after it for which `same` holds. */
  private async extend(offset: number, maxLength: number, first: Unit, same: (next: Unit, at: number) => boolean): Promise<number> {
    const limit = offset + maxLength;
    let end = Math.min(first.end, limit);
    while (end < limit) {
      const next = await this.unitAt(end);
      if (!same(next, end)) break;
      end = Math.min(next.end, limit);
    }
    return end - offset;
  }

  private async unitAt(pos: number): Promise<Unit> {
    const l1Index = Math.floor(pos / this.l2Range);
    const tableStart = l1Index * this.l2Range;
    const l2Offset = this.l2OffsetAt(l1Index);
    if (l2Offset === 0) return { kind: 'unallocated', end: tableStart + this.l2Range };
    const table = await this.l2Cache.get(l2Offset, () =>
      this.file.read(l2Offset, this.clusterSize, `the L2 table of L1 entry ${l1Index}`),
    );
    const index = Math.floor((pos - tableStart) / this.clusterSize);
    const cluster = tableStart + index * this.clusterSize;
    return this.extended ? this.subclusterUnit(table, l2Offset, index, cluster, pos) : this.clusterUnit(table, index, cluster, pos);
  }

  /** File offset of the L2 table of L1 entry `index`, 0 when the whole range is unallocated. */
  private l2OffsetAt(index: number): number {
    if (index * 8 >= this.l1.length) return 0;
    const offset = hostOffset(this.l1.readUInt32BE(index * 8), this.l1.readUInt32BE(index * 8 + 4));
    if (offset % this.clusterSize !== 0) {
      throw this.file.corrupt(`L1 entry ${index} points to an L2 table at unaligned file offset ${offset}`);
    }
    return offset;
  }

  private clusterUnit(table: Buffer, index: number, cluster: number, pos: number): Unit {
    const hi = table.readUInt32BE(index * 8);
    const lo = table.readUInt32BE(index * 8 + 4);
    const end = cluster + this.clusterSize;
    if (isCompressed(hi)) return this.compressedUnit(hi, lo, cluster);
    // Bit 0 is the zero flag: with or without a preallocated host cluster, the cluster reads as zeros.
    if (lo & 1) return { kind: 'zero', end };
    const host = hostOffset(hi, lo);
    if (host === 0) return { kind: 'unallocated', end };
    return { kind: 'data', end, host: this.checkedDataHost(host, cluster) + (pos - cluster) };
  }

  /** Extended L2 entries: 32 subclusters per cluster, each allocated, zero or unallocated on its own. */
  private subclusterUnit(table: Buffer, tableOffset: number, index: number, cluster: number, pos: number): Unit {
    const at = index * 16;
    const hi = table.readUInt32BE(at);
    const lo = table.readUInt32BE(at + 4);
    if (isCompressed(hi)) return this.compressedUnit(hi, lo, cluster);
    const zeroBits = table.readUInt32BE(at + 8);
    const allocBits = table.readUInt32BE(at + 12);
    const host = hostOffset(hi, lo);
    if ((zeroBits & allocBits) !== 0 || (host === 0 && allocBits !== 0)) {
      throw this.file.corrupt(`the subcluster bitmap of guest offset ${cluster} (L2 entry at file offset ${tableOffset + at}) is inconsistent`);
    }
    const size = this.clusterSize / SUBCLUSTERS;
    const sub = Math.floor((pos - cluster) / size);
    const end = cluster + (sub + 1) * size;
    if ((zeroBits >>> sub) & 1) return { kind: 'zero', end };
    if (((allocBits >>> sub) & 1) === 0) return { kind: 'unallocated', end };
    return { kind: 'data', end, host: this.checkedDataHost(host, cluster) + (pos - cluster) };
  }

  private compressedUnit(hi: number, lo: number, cluster: number): Unit {
    const extent = compressedExtent(hi, lo, this.header.clusterBits);
    return { kind: 'compressed', end: cluster + this.clusterSize, cluster, extent };
  }

  private checkedDataHost(host: number, guest: number): number {
    if (host % this.clusterSize !== 0 || host >= this.file.size) {
      throw this.file.corrupt(`the data cluster of guest offset ${guest} is at file offset ${host}, unaligned or past the end (${this.file.size} bytes)`);
    }
    return host;
  }
}

/** Bits 9-55 of an L1 or standard L2 entry given as two 32-bit halves. */
function hostOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
}

function isCompressed(hi: number): boolean {
  return ((hi >>> 30) & 1) === 1;
}
