import { promisify } from 'node:util';
import zlib from 'node:zlib';
import type { ImageFile } from './image-file.js';
import { LruCache } from './lru-cache.js';

/** Where a compressed cluster's deflate stream lies in the image file. */
export interface CompressedExtent {
  /** File offset of the first byte; usually not aligned to anything. */
  host: number;
  /** Bytes from `host` to the end of the last 512-byte sector the descriptor names. */
  size: number;
}

const SECTOR = 512n;
const inflateRaw = promisify(zlib.inflateRaw);
/**
 * Up to this cluster size, streams are read through cached file windows and inflated on the calling
 * thread: for small clusters a read and a thread-pool round trip per cluster cost far more than the
 * inflating (8x for 512-byte clusters), and a 64 KiB cluster blocks the event loop well under 1 ms.
 */
const SMALL_CLUSTER = 64 * 1024;
const WINDOW = 128 * 1024;
const WINDOWS = 8;
/** Memory for inflated clusters: a read that ends inside a compressed cluster and the next read share it. */
const INFLATED_BYTES = 2 * 1024 * 1024;

/**
 * Decodes a compressed cluster descriptor (L2 entry bits 0-61; `hi`/`lo` are the entry's 32-bit
 * halves). With x = 62 - (cluster_bits - 8), bits 0..x-1 are the host offset and bits x..61 the
 * number of 512-byte sectors used *beyond the sector holding the offset*, so the stream spans
 * (n + 1) * 512 bytes minus the offset's position inside its first sector (as QEMU computes it).
 */
export function compressedExtent(hi: number, lo: number, clusterBits: number): CompressedExtent {
  const entry = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(62 - (clusterBits - 8));
  const host = entry & ((1n << x) - 1n);
  const sectors = ((entry >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1n;
  return { host: Number(host), size: Number(sectors * SECTOR - (host % SECTOR)) };
}

/**
 * Reads and inflates compressed clusters (zlib raw deflate, as QEMU writes them) of one image.
 * qemu-img packs compressed clusters back to back, so small ones are read through a few cached
 * windows of the file rather than one read each.
 */
export class CompressedClusterReader {
  private readonly windows = new LruCache<number, Buffer>(WINDOWS);
  private readonly inflated: LruCache<number, Buffer>;

  constructor(
    private readonly file: ImageFile,
    private readonly clusterSize: number,
  ) {
    this.inflated = new LruCache(Math.min(16, Math.max(2, Math.floor(INFLATED_BYTES / clusterSize))));
  }

  /** The bytes of the compressed cluster at guest offset `guest`, shared by reads in flight. */
  cluster(extent: CompressedExtent, guest: number): Promise<Buffer> {
    return this.inflated.get(extent.host, () => this.inflate(extent, guest));
  }

  /**
   * The cluster's bytes. The stream may end before `extent.size` (another cluster may share the last
   * sector) and the last sector may be cut short by the end of the file; what must hold is that
   * exactly one cluster of bytes comes out.
   */
  private async inflate(extent: CompressedExtent, guest: number): Promise<Buffer> {
    const { file, clusterSize } = this;
    const what = `the compressed cluster of guest offset ${guest}`;
    if (extent.host >= file.size) {
      throw file.corrupt(`${what} at file offset ${extent.host} lies past the end of the file (${file.size} bytes)`);
    }
    const length = Math.min(extent.size, file.size - extent.host);
    const small = clusterSize <= SMALL_CLUSTER;
    const stream = small ? await this.throughWindows(extent.host, length) : await file.read(extent.host, length, what);
    let out: Buffer;
    try {
      // The output bound keeps a hostile stream from inflating into a huge allocation.
      const options = { maxOutputLength: clusterSize, finishFlush: zlib.constants.Z_SYNC_FLUSH };
      out = small ? zlib.inflateRawSync(stream, options) : await inflateRaw(stream, options);
    } catch (err) {
      throw file.corrupt(`${what} at file offset ${extent.host} does not inflate: ${(err as Error).message}`, err);
    }
    if (out.length !== clusterSize) {
      throw file.corrupt(`${what} at file offset ${extent.host} inflates to ${out.length} bytes, not one cluster (${clusterSize})`);
    }
    return out;
  }

  /** `length` file bytes from `host`, which span at most two windows (length <= the window size). */
  private async throughWindows(host: number, length: number): Promise<Buffer> {
    const first = Math.floor(host / WINDOW);
    const last = Math.floor((host + length - 1) / WINDOW);
    const head = (await this.window(first)).subarray(host - first * WINDOW);
    if (first === last) return head.subarray(0, length);
    const tail = (await this.window(last)).subarray(0, length - head.length);
    return Buffer.concat([head, tail]);
  }

  private window(index: number): Promise<Buffer> {
    const start = index * WINDOW;
    return this.windows.get(index, () => this.file.read(start, Math.min(WINDOW, this.file.size - start), 'compressed clusters'));
  }
}
