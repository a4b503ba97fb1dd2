/**
 * A least-recently-used cache of decoded blocks bounded in bytes, keyed by block id (so a block that
 * several offsets or disks share is held once). Concurrent misses of one key share one load: two
 * clients reading the same block start one repository read. A failed load is not cached.
 */
export class BlockCache {
  /** Insertion order is recency order: a hit moves the entry to the end. */
  private readonly entries = new Map<string, Buffer>();
  private readonly loading = new Map<string, Promise<Buffer>>();
  private bytes = 0;
  hits = 0;
  misses = 0;

  constructor(readonly maxBytes: number) {}

  get size(): number {
    return this.bytes;
  }

  has(key: string): boolean {
    return this.entries.has(key) || this.loading.has(key);
  }

  /** The cached block, or `load()`'s result (cached when it fits). Callers must not modify it. */
  get(key: string, load: () => Promise<Buffer>): Promise<Buffer> {
    const hit = this.entries.get(key);
    if (hit) {
      this.hits++;
      this.entries.delete(key);
      this.entries.set(key, hit);
      return Promise.resolve(hit);
    }
    const pending = this.loading.get(key);
    if (pending) {
      this.hits++;
      return pending;
    }
    this.misses++;
    const p = load().then(
      (data) => {
        this.loading.delete(key);
        this.put(key, data);
        return data;
      },
      (err: unknown) => {
        this.loading.delete(key);
        throw err;
      },
    );
    this.loading.set(key, p);
    return p;
  }

  private put(key: string, data: Buffer): void {
    if (data.length > this.maxBytes) return;
    const old = this.entries.get(key);
    if (old) {
      this.bytes -= old.length;
      this.entries.delete(key);
    }
    this.entries.set(key, data);
    this.bytes += data.length;
    for (const [k, v] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(k);
      this.bytes -= v.length;
    }
  }
}
