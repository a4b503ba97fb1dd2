/**
 * A small least-recently-used cache of pending or settled loads, so that several reads in flight
 * that need the same L2 table (or compressed cluster) share one load. A failed load is dropped, so
 * a later request tries again instead of repeating a stale error.
 */
export class LruCache<K, V> {
  private readonly entries = new Map<K, Promise<V>>();

  constructor(private readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`LruCache capacity ${capacity} must be a positive integer`);
  }

  get(key: K, load: () => Promise<V>): Promise<V> {
    const hit = this.entries.get(key);
    if (hit !== undefined) {
      // Re-inserting moves the key to the young end of the Map's insertion order.
      this.entries.delete(key);
      this.entries.set(key, hit);
      return hit;
    }
    const loading = load();
    this.entries.set(key, loading);
    loading.catch(() => {
      if (this.entries.get(key) === loading) this.entries.delete(key);
    });
    while (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value as K);
    return loading;
  }

  get size(): number {
    return this.entries.size;
  }
}
