import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { decodeIndex, PACK_HEADER_V2, readPackTrailer } from './pack.js';
import { PackWriter } from './pack-writer.js';
import type { ObjectWriter } from '../contracts/repository-backend.js';

describe('PackWriter', function () {
  it('keeps every pack within its buffer when many adds wait for a slow store at once (several disks)', async function () {
    const stored = new Map<string, Buffer>();
    const writer = new PackWriter(
      async (key, data) => {
        await new Promise((r) => setTimeout(r, 20)); // a slow repository: adds pile up behind the uploads
        stored.set(key, Buffer.from(data));
      },
      () => undefined,
      64 * 1024,
      2,
    );
    const records = Array.from({ length: 120 }, (_, i) => Buffer.alloc(7000 + (i % 13) * 500, i));
    const hashes = records.map((r) => createHash('sha256').update(r).digest());
    // Four "disks" adding concurrently, each waiting for its own previous add.
    await Promise.all(
      [0, 1, 2, 3].map(async (lane) => {
        for (let i = lane; i < records.length; i += 4) await writer.add(hashes[i], records[i]);
      }),
    );
    await writer.flush();
    const found = new Map<string, Buffer>();
    for (const [key, data] of stored) {
      if (!key.startsWith('packs/')) continue;
      expect(createHash('sha256').update(data).digest('hex'), key).to.equal(key.slice(key.lastIndexOf('/') + 1));
      const entries = readPackTrailer(data, key);
      expect(entries.reduce((n, e) => n + e.length, 0), `${key} holds more than the target size`).to.be.at.most(64 * 1024);
      for (const e of entries) found.set(e.hash.toString('hex'), data.subarray(e.offset, e.offset + e.length));
      expect(decodeIndex(stored.get(key.replace('packs/', 'index/'))!, key).entries.length).to.equal(entries.length);
    }
    expect(found.size).to.equal(records.length);
    records.forEach((r, i) => expect(found.get(hashes[i].toString('hex'))!.equals(r), `record ${i}`).to.equal(true));
  });

  /** Objects written as they are produced, in memory; `failAt`: the write at that offset fails. */
  function streamingStore(failAt?: number) {
    const stored = new Map<string, Buffer>();
    let open = 0;
    const aborted: number[] = [];
    const begin = async (): Promise<ObjectWriter> => {
      const parts: { data: Buffer; offset: number }[] = [];
      const id = ++open;
      return {
        write: async (data, offset) => {
          await new Promise((r) => setTimeout(r, (offset / 97) % 3)); // writes finish out of order
          if (offset === failAt) throw new Error('disk full');
          parts.push({ data: Buffer.from(data), offset }); // copied when written: the caller reuses `data`
        },
        commitIfAbsent: async (key) => {
          const size = Math.max(...parts.map((x) => x.offset + x.data.length));
          const out = Buffer.alloc(size, 0xee);
          for (const x of parts) x.data.copy(out, x.offset);
          if (stored.has(key)) return false;
          stored.set(key, out);
          return true;
        },
        abort: async () => void aborted.push(id),
      };
    };
    return { stored, begin, aborted };
  }

  it('writes records straight into the pack object as they come: the same packs as the buffered writer', async function () {
    const records = Array.from({ length: 60 }, (_, i) => Buffer.alloc(3000 + (i % 7) * 900, i + 1));
    const hashes = records.map((r) => createHash('sha256').update(r).digest());
    for (const pack of [1, 2] as const) {
      const buffered = new Map<string, Buffer>();
      const a = new PackWriter(async (k, d) => void buffered.set(k, Buffer.from(d)), () => undefined, 32 * 1024, 2, undefined, { pack, indexObjects: pack === 1 });
      const s = streamingStore();
      const seen: string[] = [];
      const b = new PackWriter(async (k, d) => void s.stored.set(k, Buffer.from(d)), (id) => void seen.push(id), 32 * 1024, 2, undefined, { pack, indexObjects: pack === 1 }, s.begin);
      for (let i = 0; i < records.length; i++) {
        await a.add(hashes[i], records[i]);
        // The caller reuses its memory once add resolves: scribble over it.
        const lent = Buffer.from(records[i]);
        await b.add(hashes[i], lent);
        lent.fill(0);
      }
      await Promise.all([a.flush(), b.flush()]);
      // Pack headers carry random bytes, so ids differ: compare what each pack holds, in order.
      const contents = (stored: Map<string, Buffer>): string[][] =>
        [...stored]
          .filter(([k]) => k.startsWith('packs/'))
          .map(([k, data]) => {
            if (pack === 1) expect(createHash('sha256').update(data).digest('hex'), k).to.equal(k.slice(k.lastIndexOf('/') + 1));
            return readPackTrailer(data, k).map((e) => {
              const i = hashes.findIndex((h) => h.equals(e.hash));
              expect(data.subarray(e.offset, e.offset + e.length).equals(records[i]), `${k} record ${i}`).to.equal(true);
              return String(i);
            });
          })
          .sort();
      expect(contents(s.stored), `format ${pack}`).to.deep.equal(contents(buffered));
      expect(seen.length).to.equal(contents(buffered).length);
      expect([...s.stored.keys()].filter((k) => k.startsWith('index/')).length).to.equal(pack === 1 ? seen.length : 0);
    }
  });

  it('a record whose write fails fails the writer; its pack is abandoned, never committed', async function () {
    const s = streamingStore(PACK_HEADER_V2 + 4000); // the second record of the first pack
    const w = new PackWriter(async (k, d) => void s.stored.set(k, Buffer.from(d)), () => undefined, 32 * 1024, 2, undefined, { pack: 2, indexObjects: false }, s.begin);
    const rec = (i: number): Buffer => Buffer.alloc(4000, i);
    const hash = (i: number): Buffer => createHash('sha256').update(rec(i)).digest();
    let failed: unknown;
    try {
      for (let i = 0; i < 20; i++) await w.add(hash(i), rec(i));
      await w.flush();
    } catch (err) {
      failed = err;
    }
    expect((failed as Error)?.message).to.equal('disk full');
    await w.flush().then(
      () => expect.fail('flush after a failed write resolved'),
      (err: Error) => expect(err.message).to.equal('disk full'),
    );
    expect([...s.stored.keys()]).to.deep.equal([]);
    expect(s.aborted.length).to.be.greaterThan(0);
  });
});
