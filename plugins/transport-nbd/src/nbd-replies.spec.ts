import { expect } from 'chai';
import { Prng } from '@ferry/core/testing';
import { NBD_CMD_BLOCK_STATUS, NBD_CMD_READ, NBD_CMD_WRITE } from './nbd-protocol.js';
import { ReplyParser, type InFlight, type ReplySink } from './nbd-replies.js';
import { chunk, errorChunk, offsetData, simpleReply } from './test-support/fake-nbd-server.js';

function cookie(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(n, 4);
  return b;
}

function hole(c: Buffer, offset: number, length: number, done: boolean): Buffer {
  const p = Buffer.alloc(12);
  p.writeBigUInt64BE(BigInt(offset), 0);
  p.writeUInt32BE(length, 8);
  return chunk(c, done ? 1 : 0, 2, p);
}

function status(c: Buffer, id: number, extents: [number, number][], done: boolean): Buffer {
  const p = Buffer.alloc(4 + 8 * extents.length);
  p.writeUInt32BE(id, 0);
  extents.forEach(([len, flags], i) => {
    p.writeUInt32BE(len, 4 + 8 * i);
    p.writeUInt32BE(flags, 8 + 8 * i);
  });
  return chunk(c, done ? 1 : 0, 5, p);
}

/** A sink that records completions and fatal errors, with three requests in flight. */
function harness(): { sink: ReplySink; reqs: InFlight[]; done: number[]; fatal: string[] } {
  const reqs: InFlight[] = [
    { cookie: 1, command: NBD_CMD_READ, offset: 4096, length: 3000, target: Buffer.alloc(3000, 0xee), covered: [] },
    { cookie: 2, command: NBD_CMD_BLOCK_STATUS, offset: 0, length: 1 << 20, covered: [] },
    { cookie: 3, command: NBD_CMD_WRITE, offset: 0, length: 512, covered: [] },
  ];
  const done: number[] = [];
  const fatal: string[] = [];
  const sink: ReplySink = {
    lookup: (c) => (done.includes(c) ? undefined : reqs.find((r) => r.cookie === c)),
    complete: (r) => done.push(r.cookie),
    fatal: (why) => fatal.push(why),
  };
  return { sink, reqs, done, fatal };
}

describe('ReplyParser', () => {
  const data = new Prng(1).fill(Buffer.alloc(1000));
  // Interleaved chunks of three requests, data arriving out of order, as the spec allows.
  const stream = Buffer.concat([
    offsetData(cookie(1), 4096 + 2000, data, false),
    status(cookie(2), 7, [[65536, 0], [1 << 21, 3]], false),
    hole(cookie(1), 4096 + 1000, 1000, false),
    simpleReply(cookie(3), 0),
    offsetData(cookie(1), 4096, data, false),
    status(cookie(2), 9, [[1 << 20, 1]], true),
    chunk(cookie(1), 1, 0, Buffer.alloc(0)),
  ]);

  function check(h: ReturnType<typeof harness>): void {
    expect(h.fatal).to.deep.equal([]);
    expect(h.done).to.deep.equal([3, 2, 1]);
    const t = h.reqs[0].target!;
    expect(t.subarray(0, 1000).equals(data) && t.subarray(2000).equals(data)).to.equal(true);
    expect(t.subarray(1000, 2000).every((b) => b === 0)).to.equal(true);
    expect(h.reqs[1].status!.get(7)).to.deep.equal([
      { offset: 0, length: 65536, flags: 0 },
      { offset: 65536, length: 1 << 21, flags: 3 },
    ]);
    expect(h.reqs[1].status!.get(9)).to.have.length(1);
  }

  it('reassembles interleaved chunks fed in one piece', () => {
    const h = harness();
    new ReplyParser(h.sink, true).push(stream);
    check(h);
  });

  it('reassembles the same stream fed one byte at a time and in random splits', () => {
    const h = harness();
    const p = new ReplyParser(h.sink, true);
    for (let i = 0; i < stream.length; i++) p.push(stream.subarray(i, i + 1));
    check(h);
    const rng = new Prng(2);
    for (let round = 0; round < 20; round++) {
      const r = harness();
      const q = new ReplyParser(r.sink, true);
      for (let at = 0; at < stream.length; ) {
        const n = 1 + rng.int(97);
        q.push(stream.subarray(at, at + n));
        at += n;
      }
      check(r);
    }
  });

  it('keeps the first server error of a request and ends the request at the final chunk', () => {
    const h = harness();
    const p = new ReplyParser(h.sink, true);
    p.push(Buffer.concat([offsetData(cookie(1), 4096, data, false), errorChunk(cookie(1), 5, 'bad sector', 4096 + 1500)]));
    expect(h.done).to.deep.equal([1]);
    expect(h.reqs[0].serverError).to.deep.equal({ errno: 5, message: 'bad sector', offset: 4096 + 1500 });
    expect(p.midReply).to.equal(false);
  });

  it('reports overlapping content chunks and stops parsing', () => {
    const h = harness();
    const p = new ReplyParser(h.sink, true);
    p.push(Buffer.concat([offsetData(cookie(1), 4096, data, false), hole(cookie(1), 4096 + 999, 10, true), simpleReply(cookie(3), 0)]));
    expect(h.fatal).to.have.length(1);
    expect(h.fatal[0]).to.contain('overlaps');
    expect(h.done).to.deep.equal([]);
  });

  it('refuses structured chunks when only simple replies were agreed', () => {
    const h = harness();
    new ReplyParser(h.sink, false).push(offsetData(cookie(1), 4096, data));
    expect(h.fatal[0]).to.contain('not agreed');
  });

  it('reads simple read replies straight into the target', () => {
    const h = harness();
    const p = new ReplyParser(h.sink, false);
    const payload = new Prng(4).fill(Buffer.alloc(3000));
    const bytes = simpleReply(cookie(1), 0, payload);
    p.push(bytes.subarray(0, 20));
    expect(p.midReply).to.equal(true);
    p.push(bytes.subarray(20));
    expect(h.done).to.deep.equal([1]);
    expect(h.reqs[0].target!.equals(payload)).to.equal(true);
  });
});
