import { expect } from 'chai';
import { LruCache } from './lru-cache.js';

describe('LruCache', () => {
  it('shares one load between requests for the same key', async () => {
    const cache = new LruCache<number, string>(2);
    let loads = 0;
    const load = async (): Promise<string> => `v${++loads}`;
    const [a, b] = await Promise.all([cache.get(1, load), cache.get(1, load)]);
    expect([a, b, loads]).to.deep.equal(['v1', 'v1', 1]);
  });

  it('evicts the least recently used entry beyond its capacity', async () => {
    const cache = new LruCache<number, number>(2);
    const loaded: number[] = [];
    const get = (k: number): Promise<number> => cache.get(k, async () => (loaded.push(k), k));
    await get(1);
    await get(2);
    await get(1);
    await get(3); // evicts 2, the older one
    await get(1);
    await get(2);
    expect(loaded).to.deep.equal([1, 2, 3, 2]);
    expect(cache.size).to.equal(2);
  });

  it('forgets a failed load so the next request tries again', async () => {
    const cache = new LruCache<string, number>(2);
    await cache.get('k', async () => Promise.reject(new Error('EIO'))).catch(() => undefined);
    expect(await cache.get('k', async () => 7)).to.equal(7);
  });
});
