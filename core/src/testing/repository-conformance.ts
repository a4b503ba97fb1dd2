import assert from 'node:assert/strict';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError } from '../errors.js';
import { skipBecause, skipUnlessTools } from './test-skips.js';
import type { ConformanceOptions } from './transport-conformance.js';

export interface BackendUnderTest {
  backend: RepositoryBackend;
  /** Removes everything the backend stored (called after each test). */
  cleanup(): Promise<void>;
}

/**
 * The conformance suite every repository backend runs (in-tree and third-party): call it at the top
 * level of a mocha spec file with a factory that returns an empty backend. A case for an optional
 * method the backend does not offer is skipped, each one counted on its own; `options.needs` names
 * tools the backend's server needs (every case skips without them, or fails under CI).
 */
export function runRepositoryConformance(name: string, create: () => Promise<BackendUnderTest>, options: ConformanceOptions = {}): void {
  describe(`repository backend conformance: ${name}`, function () {
    let b: BackendUnderTest;
    before(function () {
      if (options.needs) skipUnlessTools(this, options.needs);
    });
    beforeEach(async () => {
      b = await create();
    });
    afterEach(async () => {
      await b.backend.close?.();
      await b.cleanup();
    });

    it('put then get returns the same bytes; put replaces', async function () {
      const data = Buffer.from('hello ferry');
      await b.backend.put('blocks/ab/abcdef', data);
      assert.deepEqual(Buffer.from(await b.backend.get('blocks/ab/abcdef')), data);
      await b.backend.put('blocks/ab/abcdef', Buffer.from('second'));
      assert.equal(Buffer.from(await b.backend.get('blocks/ab/abcdef')).toString(), 'second');
    });

    it('stores empty and large objects', async function () {
      await b.backend.put('empty', Buffer.alloc(0));
      assert.equal((await b.backend.get('empty')).length, 0);
      const big = Buffer.alloc(9 * 1024 * 1024, 7);
      await b.backend.put('big', big);
      assert.ok(Buffer.from(await b.backend.get('big')).equals(big));
    });

    it('get of a missing key is REPO_OBJECT_NOT_FOUND naming the key', async function () {
      await assert.rejects(b.backend.get('points/none.json'), (err: unknown) => {
        assert.ok(err instanceof FerryError, String(err));
        assert.equal(err.code, 'REPO_OBJECT_NOT_FOUND');
        assert.match(err.message, /points\/none\.json/);
        return true;
      });
    });

    it('has tells present from missing', async function () {
      assert.equal(await b.backend.has('a/b'), false);
      await b.backend.put('a/b', Buffer.from('x'));
      assert.equal(await b.backend.has('a/b'), true);
    });

    it('list yields exactly the keys under a prefix', async function () {
      for (const k of ['points/vm1/p1.json', 'points/vm1/p1/disk-0.map', 'points/vm10/p2.json', 'blocks/00/00aa', 'config']) {
        await b.backend.put(k, Buffer.from(k));
      }
      const list = async (prefix: string): Promise<string[]> => {
        const out: string[] = [];
        for await (const k of b.backend.list(prefix)) out.push(k);
        return out.sort();
      };
      assert.deepEqual(await list('points/vm1/'), ['points/vm1/p1.json', 'points/vm1/p1/disk-0.map']);
      assert.deepEqual(await list('points/vm1'), ['points/vm1/p1.json', 'points/vm1/p1/disk-0.map', 'points/vm10/p2.json']);
      assert.deepEqual(await list('blocks/'), ['blocks/00/00aa']);
      assert.equal((await list('')).length, 5);
      assert.deepEqual(await list('nothing/'), []);
    });

    it('delete removes a key (has and list no longer see it) and ignores a missing one', async function () {
      await b.backend.put('x/y', Buffer.from('1'));
      await b.backend.put('x/z', Buffer.from('2'));
      await b.backend.delete('x/y');
      assert.equal(await b.backend.has('x/y'), false);
      const listed: string[] = [];
      for await (const k of b.backend.list('x/')) listed.push(k);
      assert.deepEqual(listed, ['x/z']); // garbage collection relies on this
      await b.backend.delete('x/y');
    });

    it('getRange, when offered, returns the slice', async function () {
      if (!b.backend.getRange) skipBecause(this, `${name} offers no getRange`);
      await b.backend.put('r', Buffer.from('0123456789'));
      assert.equal(Buffer.from(await b.backend.getRange!('r', 3, 4)).toString(), '3456');
    });

    it('getRangeInto, when offered, fills the whole buffer with the slice; a range past the end is an error', async function () {
      if (!b.backend.getRangeInto) skipBecause(this, `${name} offers no getRangeInto`);
      await b.backend.put('r', Buffer.from('0123456789'));
      const into = Buffer.alloc(4);
      await b.backend.getRangeInto!('r', 3, into);
      assert.equal(into.toString(), '3456');
      await assert.rejects(b.backend.getRangeInto!('r', 8, Buffer.alloc(4)));
    });

    it('protect, when offered, keeps objects readable and never throws; unprotect then lets them be replaced and deleted', async function () {
      if (!b.backend.protect || !b.backend.unprotect) skipBecause(this, `${name} offers no protect and unprotect`);
      await b.backend.put('points/vm/p.json', Buffer.from('manifest'));
      const got = await b.backend.protect!(['points/vm/p.json']);
      assert.equal(typeof got.readOnly, 'boolean');
      assert.equal(typeof got.immutable, 'boolean');
      if (!got.immutable) assert.equal(typeof got.note, 'string', 'a backend that cannot make objects immutable says why');
      await b.backend.protect!(['points/vm/p.json']); // idempotent
      assert.equal(Buffer.from(await b.backend.get('points/vm/p.json')).toString(), 'manifest');
      await b.backend.unprotect!(['points/vm/p.json', 'points/vm/missing.json']);
      await b.backend.put('points/vm/p.json', Buffer.from('replaced'));
      assert.equal(Buffer.from(await b.backend.get('points/vm/p.json')).toString(), 'replaced');
      await b.backend.delete('points/vm/p.json');
      assert.equal(await b.backend.has('points/vm/p.json'), false);
    });

    it('retain, when offered, keeps a key until its date (never shortened), then lets it be deleted', async function () {
      if (!b.backend.retain || !b.backend.retainedUntil) skipBecause(this, `${name} offers no retain and retainedUntil`);
      this.timeout(30_000);
      const key = 'packs/aa/retained';
      await b.backend.putIfAbsent(key, Buffer.from('pack'));
      // Whole seconds: object storage keeps retention dates to the second.
      const until = new Date(Math.ceil((Date.now() + 2500) / 1000) * 1000);
      const got = await b.backend.retain!([key], until);
      assert.equal(typeof got.readOnly, 'boolean');
      assert.equal(typeof got.immutable, 'boolean');
      assert.equal((await b.backend.retainedUntil!(key))?.getTime(), until.getTime());
      await b.backend.retain!([key], new Date(until.getTime() - 60_000)); // earlier: no change
      assert.equal((await b.backend.retainedUntil!(key))?.getTime(), until.getTime(), 'a retain-until date is never shortened');
      await assert.rejects(b.backend.delete(key), (err: unknown) => {
        assert.equal((err as { code?: string }).code, 'REPO_IMMUTABLE');
        assert.ok(String((err as Error).message).includes(until.toISOString()), 'the refusal names the date');
        return true;
      });
      assert.equal(await b.backend.has(key), true);
      assert.equal(Buffer.from(await b.backend.get(key)).toString(), 'pack');
      await new Promise((r) => setTimeout(r, Math.max(0, until.getTime() - Date.now()) + 300));
      await b.backend.delete(key);
      assert.equal(await b.backend.has(key), false);
    });

    it('beginObject, when offered: writes in any order land at their offsets; commit is create-only; abort leaves nothing', async function () {
      const begin = b.backend.beginObject?.bind(b.backend);
      if (!begin) skipBecause(this, `${name} offers no beginObject`);
      const parts = [Buffer.alloc(70_000, 1), Buffer.alloc(5, 2), Buffer.alloc(100_000, 3)];
      const whole = Buffer.concat(parts);
      const w = await begin();
      // Out of order and at once, each buffer scribbled over as soon as its write resolved.
      await Promise.all(
        [2, 0, 1].map(async (i) => {
          const lent = Buffer.from(parts[i]);
          await w.write(lent, parts.slice(0, i).reduce((n, p) => n + p.length, 0));
          lent.fill(9);
        }),
      );
      assert.equal(await b.backend.has('packs/st/streamed'), false, 'nothing is visible before the commit');
      assert.equal(await w.commitIfAbsent('packs/st/streamed'), true);
      assert.deepEqual(Buffer.from(await b.backend.get('packs/st/streamed')), whole);

      const again = await begin();
      await again.write(Buffer.from('other'), 0);
      assert.equal(await again.commitIfAbsent('packs/st/streamed'), false, 'an existing key is never replaced');
      assert.deepEqual(Buffer.from(await b.backend.get('packs/st/streamed')), whole);

      const dropped = await begin();
      await dropped.write(Buffer.from('dropped'), 0);
      await dropped.abort();
      const keys: string[] = [];
      for await (const k of b.backend.list('')) keys.push(k);
      assert.deepEqual(keys, ['packs/st/streamed'], 'neither the loser nor the aborted object left a key');
      assert.equal(await b.backend.removeStaleTemporaries?.(0) ?? 0, 0, 'nor a temporary');
    });

    it('concurrent puts of different keys all land', async function () {
      await Promise.all(Array.from({ length: 32 }, (_, i) => b.backend.put(`blocks/${String(i % 4).padStart(2, '0')}/k${i}`, Buffer.from([i]))));
      for (let i = 0; i < 32; i++) assert.equal((await b.backend.get(`blocks/${String(i % 4).padStart(2, '0')}/k${i}`))[0], i);
    });

    it('putIfAbsent creates once: of concurrent calls for one key exactly one wins, and the object holds its bytes', async function () {
      const results = await Promise.all(Array.from({ length: 16 }, (_, i) => b.backend.putIfAbsent('points/vm/once.json', Buffer.from(`writer ${i}`))));
      assert.equal(results.filter(Boolean).length, 1, 'exactly one putIfAbsent creates the object');
      const winner = results.indexOf(true);
      assert.equal(Buffer.from(await b.backend.get('points/vm/once.json')).toString(), `writer ${winner}`);
      const keys: string[] = [];
      for await (const k of b.backend.list('')) keys.push(k);
      assert.deepEqual(keys, ['points/vm/once.json'], 'losers leave nothing behind under any key');
    });

    it('putIfAbsent never replaces: an existing key resolves false and keeps its bytes', async function () {
      await b.backend.put('packs/ab/abcd', Buffer.from('first'));
      assert.equal(await b.backend.putIfAbsent('packs/ab/abcd', Buffer.from('second')), false);
      assert.equal(Buffer.from(await b.backend.get('packs/ab/abcd')).toString(), 'first');
      assert.equal(await b.backend.putIfAbsent('packs/ab/new', Buffer.alloc(0)), true);
      assert.equal((await b.backend.get('packs/ab/new')).length, 0);
      await b.backend.delete('packs/ab/abcd');
      assert.equal(await b.backend.putIfAbsent('packs/ab/abcd', Buffer.from('again')), true, 'a deleted key can be created again');
    });
  });
}
