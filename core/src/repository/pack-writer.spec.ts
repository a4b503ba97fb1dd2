import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { decodeIndex, readPackTrailer } from './pack.js';
import { PackWriter } from './pack-writer.js';

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
});
