import { expect } from 'chai';
import { createHash, randomBytes } from 'node:crypto';
import { encodeBlock } from './block-object.js';
import { BlockIndex } from './block-index.js';
import { decodeIndexV2, encodeIndexV2 } from './index-object-v2.js';
import { checkPack, packFormat, PACK_HEADER_V2, type PackEntry } from './pack.js';
import { PackWriter } from './pack-writer.js';

async function writePacks(format: 1 | 2, blocks: number): Promise<{ stored: Map<string, Buffer>; packs: { id: string; entries: PackEntry[]; bytes: number }[] }> {
  const stored = new Map<string, Buffer>();
  const packs: { id: string; entries: PackEntry[]; bytes: number }[] = [];
  const w = new PackWriter(
    async (k, d) => void stored.set(k, Buffer.from(d)),
    (id, entries, bytes) => packs.push({ id, entries, bytes }),
    64 * 1024,
    2,
    undefined,
    { pack: format, indexObjects: format === 1 },
  );
  for (let i = 0; i < blocks; i++) {
    const raw = randomBytes(5000);
    await w.add(createHash('sha256').update(raw).digest(), encodeBlock('none', raw.length, raw));
  }
  await w.flush();
  return { stored, packs };
}

describe('format 2 packs and index objects', function () {
  it('a version 2 pack id hashes header and tail only, and checkPack verifies it and every block CRC', async function () {
    const { stored, packs } = await writePacks(2, 30);
    expect(packs.length).to.be.greaterThan(1);
    expect([...stored.keys()].every((k) => k.startsWith('packs/'))).to.equal(true); // no per-pack index objects
    for (const p of packs) {
      const bytes = stored.get(`packs/${p.id.slice(0, 2)}/${p.id}`)!;
      expect(packFormat(bytes)).to.equal(2);
      expect(checkPack(bytes, p.id, 'x')).to.deep.equal(p.entries);
      expect(p.entries[0].offset).to.equal(PACK_HEADER_V2);
      // Not the whole-pack hash of version 1.
      expect(createHash('sha256').update(bytes).digest('hex')).to.not.equal(p.id);
    }
    const p = packs[0];
    const bytes = stored.get(`packs/${p.id.slice(0, 2)}/${p.id}`)!;
    const inBlock = Buffer.from(bytes);
    inBlock[p.entries[1].offset + 100] ^= 1;
    expect(() => checkPack(inBlock, p.id, 'x')).to.throw(/block object 1 .*CRC-32/);
    const inHeader = Buffer.from(bytes);
    inHeader[5] ^= 1;
    expect(() => checkPack(inHeader, p.id, 'x')).to.throw(/do not hash to its id/);
  });

  it('checkPack still checks a version 1 pack by its whole-pack hash', async function () {
    const { stored, packs } = await writePacks(1, 5);
    const p = packs[0];
    const bytes = stored.get(`packs/${p.id.slice(0, 2)}/${p.id}`)!;
    expect(packFormat(bytes)).to.equal(1);
    expect(checkPack(bytes, p.id, 'x').length).to.equal(p.entries.length);
    bytes[p.entries[0].offset + 50] ^= 1;
    expect(() => checkPack(bytes, p.id, 'x')).to.throw(/does not hash to its id/);
  });

  it('a consolidated index object round-trips many packs, sorted by hash, and feeds the block index', async function () {
    const { packs } = await writePacks(2, 40);
    const until = new Date(Date.UTC(2027, 0, 5));
    const bytes = encodeIndexV2(packs.map((p) => ({ id: p.id, format: 2 as const, retainUntil: until, size: p.bytes, entries: p.entries })));
    const decoded = decodeIndexV2(bytes, 'indexes/x');
    expect(decoded.packs.map((p) => p.id)).to.deep.equal(packs.map((p) => p.id));
    expect(decoded.packs[0].retainUntil?.toISOString()).to.equal(until.toISOString());
    expect(decoded.count).to.equal(40);
    const index = new BlockIndex();
    const numbers = decoded.packs.map((p) => index.packNumber(p.id));
    let last = Buffer.alloc(32);
    decoded.forEach((hash, pack, offset, length) => {
      expect(Buffer.compare(last, Buffer.from(hash))).to.be.below(1);
      last = Buffer.from(hash);
      index.stage(hash, numbers[pack], offset, length);
    });
    index.finishLoad();
    for (const p of packs) for (const e of p.entries) expect(index.get(e.hash)).to.deep.equal({ pack: p.id, offset: e.offset, length: e.length });
    bytes[30] ^= 1;
    expect(() => decodeIndexV2(bytes, 'indexes/x')).to.throw(/CRC-32/);
  });
});
