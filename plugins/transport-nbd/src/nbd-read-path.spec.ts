import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { ByteFeed, type ByteConsumer } from './byte-feed.js';
import { NbdClient, READ_REQUEST_BYTES } from './nbd-client.js';
import { NBD_CMD_READ } from './nbd-protocol.js';
import { ReplyParser, type InFlight, type ReplySink } from './nbd-replies.js';
import { chunk, offsetData, simpleReply, startFakeServer, type FakeRequest, type FakeServer } from './test-support/fake-nbd-server.js';
import { tempDir } from './test-support/nbd-servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

function cookie(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(n, 4);
  return b;
}

/** A parser with one READ of `length` bytes at 0 in flight (cookie 1). */
function oneRead(structured: boolean, length: number): { parser: ReplyParser; req: InFlight; done: number[]; fatal: string[] } {
  const req: InFlight = { cookie: 1, command: NBD_CMD_READ, offset: 0, length, target: Buffer.alloc(length), covered: [] };
  const done: number[] = [];
  const fatal: string[] = [];
  const sink: ReplySink = { lookup: (c) => (c === 1 && !done.length ? req : undefined), complete: (r) => done.push(r.cookie), fatal: (w) => fatal.push(w) };
  return { parser: new ReplyParser(sink, structured), req, done, fatal };
}

describe('NBD read path', function () {
  this.timeout(5000);

  describe('reply headers are read apart from the data (no copy of a READ reply through the scratch buffer)', () => {
    it('asks for exactly the header before the data: 28 bytes structured, 16 simple', () => {
      const data = Buffer.alloc(64 * KiB, 7);
      const s = oneRead(true, data.length);
      expect(s.parser.readLimit()).to.equal(28);
      const bytes = offsetData(cookie(1), 0, data);
      s.parser.push(bytes.subarray(0, 28));
      expect(s.parser.readLimit()).to.equal(64 * KiB);
      expect(s.parser.directRegion()).to.have.length(64 * KiB);
      // Split headers: the rest of the chunk header and the 8-byte offset; then the offset alone.
      const t = oneRead(true, data.length);
      t.parser.push(bytes.subarray(0, 4));
      expect(t.parser.readLimit()).to.equal(24);
      t.parser.push(bytes.subarray(4, 20));
      expect(t.parser.readLimit()).to.equal(8);
      t.parser.push(bytes.subarray(20));
      expect(t.done).to.deep.equal([1]);
      expect(t.req.target!.equals(data)).to.equal(true);
      expect(t.parser.readLimit()).to.equal(28);
      const u = oneRead(false, data.length);
      expect(u.parser.readLimit()).to.equal(16);
      u.parser.push(simpleReply(cookie(1), 0, data).subarray(0, 16));
      expect(u.parser.directRegion()).to.have.length(64 * KiB);
      expect(u.fatal).to.deep.equal([]);
    });

    it('the feed reads no further than the limit into its scratch buffer, and into the direct region when one is due', () => {
      const feed = new ByteFeed();
      const region = Buffer.alloc(32 * KiB);
      let limit = 28;
      let direct: Buffer | undefined;
      const got: number[] = [];
      const consumer: ByteConsumer = {
        push: (c) => got.push(c.length),
        readLimit: () => limit,
        directRegion: () => direct,
        advanceDirect: (n) => got.push(-n),
      };
      feed.attach(consumer);
      const onread = feed.onread();
      const next = onread.buffer as () => Buffer;
      const deliver = onread.callback as (n: number, b: Buffer) => boolean;
      const header = next();
      expect(header.length).to.equal(28);
      deliver(28, header);
      direct = region;
      expect(next()).to.equal(region);
      deliver(1000, region);
      direct = undefined;
      limit = 0;
      expect(next().length).to.be.greaterThan(28);
      expect(got).to.deep.equal([28, -1000]);
    });
  });

  describe('against a server', () => {
    let tmp: { dir: string; remove(): void };
    let server: FakeServer | undefined;
    let client: NbdClient | undefined;

    beforeEach(() => {
      tmp = tempDir();
    });
    afterEach(async () => {
      await client?.close().catch(() => undefined);
      client = undefined;
      await server?.close();
      server = undefined;
      tmp.remove();
    });

    /** A server that answers READs (pattern `offset / 4096 & 0xff` per 4 KiB) only once `batch` requests wait. */
    async function batchingServer(batch: number): Promise<FakeServer> {
      let waiting: FakeRequest[] = [];
      await server?.close();
      server = await startFakeServer(path.join(tmp.dir, `fake-${batch}.sock`), {
        size: 64 * MiB,
        onRequest: (req, s) => {
          waiting.push(req);
          if (waiting.length < batch) return;
          for (const r of waiting) {
            const data = Buffer.alloc(r.length);
            for (let at = 0; at < r.length; at += 4096) data.fill(((r.offset + at) / 4096) & 0xff, at, at + 4096);
            // Two chunks per request, the second first: data lands by offset, not by arrival.
            const half = r.length / 2;
            s.write(Buffer.concat([offsetData(r.cookie, r.offset + half, data.subarray(half), false), offsetData(r.cookie, r.offset, data.subarray(0, half), false), chunk(r.cookie, 1, 0, Buffer.alloc(0))]));
          }
          waiting = [];
        },
      });
      return server;
    }

    function pattern(offset: number, length: number): Buffer {
      const want = Buffer.alloc(length);
      for (let at = 0; at < length; at += 4096) want.fill(((offset + at) / 4096) & 0xff, at, at + 4096);
      return want;
    }

    it(`splits a long read into READ requests of ${READ_REQUEST_BYTES / KiB} KiB by default, all on the wire together`, async () => {
      const s = await batchingServer(4);
      client = await NbdClient.connect({ address: s.address });
      const into = Buffer.alloc(2 * MiB);
      await client.readInto(8 * MiB, into);
      expect(s.requests.map((r) => [r.offset, r.length])).to.deep.equal([0, 1, 2, 3].map((i) => [8 * MiB + i * 512 * KiB, 512 * KiB]));
      expect(into.equals(pattern(8 * MiB, 2 * MiB))).to.equal(true);
    });

    it('takes another read request size, never above the largest request', async () => {
      const s = await batchingServer(4);
      client = await NbdClient.connect({ address: s.address, readRequestBytes: 256 * KiB });
      const got = await client.read(MiB, MiB);
      expect(s.requests.map((r) => r.length)).to.deep.equal([256 * KiB, 256 * KiB, 256 * KiB, 256 * KiB]);
      expect(got.equals(pattern(MiB, MiB))).to.equal(true);
      await client.close();
      const t = await batchingServer(2);
      client = await NbdClient.connect({ address: t.address, readRequestBytes: 4 * MiB, maxRequestBytes: 128 * KiB });
      expect((await client.read(0, 256 * KiB)).equals(pattern(0, 256 * KiB))).to.equal(true);
      expect(t.requests.map((r) => r.length)).to.deep.equal([128 * KiB, 128 * KiB]);
      for (const bad of [0, -1, 1.5, Number.NaN]) {
        const err = await NbdClient.connect({ address: t.address, readRequestBytes: bad }).catch((e: unknown) => e as FerryError);
        expect(err).to.be.instanceOf(FerryError);
        expect((err as FerryError).code).to.equal('SOURCE_UNREACHABLE');
        expect((err as FerryError).message).to.contain('readRequestBytes must be a positive integer');
      }
      expect(t.connections()).to.equal(1);
    });
  });
});
