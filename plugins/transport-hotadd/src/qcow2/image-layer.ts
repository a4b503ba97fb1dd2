import type { AllocationExtent } from '@ferry/core/plugin';
import type { SeekAddon } from '../seek-addon.js';
import { seekExtents } from '../seek-extents.js';
import type { ClusterMap, ClusterRun } from './cluster-map.js';
import { CompressedClusterReader } from './compressed-cluster.js';
import type { ImageFile } from './image-file.js';
import type { Qcow2Header, Qcow2Notes } from './qcow2-header.js';

/**
 * One image of a backing chain as the layer above sees it: a qcow2 image or a raw file. Callers keep
 * every range inside `[0, size)`; a layer above that is larger than its backing file reads the bytes
 * beyond `size` as zeros itself.
 */
export interface ImageLayer {
  readonly format: 'raw' | 'qcow2';
  readonly file: ImageFile;
  /** Guest-visible size in bytes. */
  readonly size: number;
  /** The next image down the chain, if any. */
  readonly backing?: ImageLayer;
  /** Fills `into` with the guest bytes `[offset, offset + into.length)`. */
  readInto(into: Buffer, offset: number): Promise<void>;
  /**
   * What the run of guest bytes starting at `offset` holds, from metadata alone (no data is read):
   * one extent of 1..`maxLength` bytes.
   */
  status(offset: number, maxLength: number): Promise<AllocationExtent>;
}

/**
 * One qcow2 image of a chain: assembles guest bytes from its own clusters, its backing layer and
 * zeros. Unallocated ranges fall through to the backing layer; where there is none, or the backing
 * layer is smaller than this image, they read as zeros (spec: "Cluster mapping").
 */
export class Qcow2Layer implements ImageLayer {
  readonly format = 'qcow2';
  private readonly compressed: CompressedClusterReader;

  constructor(
    readonly file: ImageFile,
    readonly header: Qcow2Header,
    readonly notes: Qcow2Notes,
    private readonly map: ClusterMap,
    readonly backing: ImageLayer | undefined,
  ) {
    this.compressed = new CompressedClusterReader(file, header.clusterSize);
  }

  get size(): number {
    return this.header.virtualSize;
  }

  async readInto(into: Buffer, offset: number): Promise<void> {
    for (let done = 0; done < into.length; ) {
      const run = await this.map.run(offset + done, into.length - done);
      await this.readRun(run, into.subarray(done, done + run.length));
      done += run.length;
    }
  }

  async status(offset: number, maxLength: number): Promise<AllocationExtent> {
    const run = await this.map.allocation(offset, maxLength);
    const { length } = run;
    if (run.kind === 'data') return { offset, length, kind: 'data' };
    const backing = this.backing;
    if (run.kind === 'zero' || !backing || offset >= backing.size) return { offset, length, kind: 'zero' };
    return backing.status(offset, Math.min(length, backing.size - offset));
  }

  private async readRun(run: ClusterRun, into: Buffer): Promise<void> {
    switch (run.kind) {
      case 'data':
        return this.file.readInto(into, 0, run.length, run.host, `the data of guest offset ${run.offset}`);
      case 'zero':
        into.fill(0);
        return;
      case 'unallocated':
        return this.readBacking(into, run.offset);
      case 'compressed': {
        const { extent, cluster } = run;
        const bytes = await this.compressed.cluster(extent, cluster);
        bytes.copy(into, 0, run.offset - cluster, run.offset - cluster + run.length);
        return;
      }
    }
  }

  private async readBacking(into: Buffer, offset: number): Promise<void> {
    const covered = this.backing ? Math.max(0, Math.min(into.length, this.backing.size - offset)) : 0;
    if (covered > 0) await this.backing!.readInto(into.subarray(0, covered), offset);
    into.fill(0, covered);
  }
}

/**
 * A raw file at the bottom of a backing chain. Holes are found with SEEK_DATA / SEEK_HOLE when the
 * addon is loaded; without it every byte is `data`, which costs reads but never loses data.
 */
export class RawLayer implements ImageLayer {
  readonly format = 'raw';
  readonly size: number;
  /** The last answer of seekExtents: asked again only when a status request falls outside it. */
  private known: AllocationExtent[] = [];

  constructor(
    readonly file: ImageFile,
    private readonly seek: SeekAddon | undefined,
  ) {
    this.size = file.size;
  }

  /** Whether `status` can tell holes from data here. */
  get findsHoles(): boolean {
    return this.seek !== undefined;
  }

  readInto(into: Buffer, offset: number): Promise<void> {
    return this.file.readInto(into, 0, into.length, offset, `guest bytes ${offset}..${offset + into.length}`);
  }

  async status(offset: number, maxLength: number): Promise<AllocationExtent> {
    const end = Math.min(this.size, offset + maxLength);
    if (!this.seek) return { offset, length: end - offset, kind: 'data' };
    let hit = this.known.find((e) => e.offset <= offset && offset < e.offset + e.length);
    if (!hit) {
      this.known = this.findExtents(this.seek, offset, end);
      hit = this.known[0];
    }
    return { offset, length: Math.min(end, hit.offset + hit.length) - offset, kind: hit.kind };
  }

  private findExtents(seek: SeekAddon, offset: number, end: number): AllocationExtent[] {
    try {
      return seekExtents(seek, this.file.fd, offset, end);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException)?.code ?? String(err);
      throw this.file.error('TRANSPORT_READ_FAILED', `finding holes in ${this.file.path} failed: ${code}`, err);
    }
  }
}
