import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { crc32 } from '../../util/checksums.js';
import { parseAddress, formatAddress } from './address.js';
import { encodeFrame, FRAME_FLAG_BODY_UNCHECKED, FRAME_PREFIX_BYTES, FrameBuffers, FrameDecoder, FrameKind, MAX_HEADER_BYTES } from './frame.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return (err as FerryError).code;
  }
  return undefined;
}

describe('data pipe frames', function () {
  it('round-trip header and body, also when the bytes arrive one at a time or several frames at once', function () {
    const body = Buffer.from(Array.from({ length: 3000 }, (_, i) => i & 0xff));
    const a = encodeFrame(FrameKind.MESSAGE, { type: 'block', header: { index: 7 } }, body);
    const b = encodeFrame(FrameKind.PING, { seq: 1 });
    const together = new FrameDecoder().push(Buffer.concat([a, b]));
    expect(together.map((f) => f.kind)).to.deep.equal([FrameKind.MESSAGE, FrameKind.PING]);
    expect(together[0].header).to.deep.equal({ type: 'block', header: { index: 7 } });
    expect(together[0].body.equals(body)).to.equal(true);
    expect(together[1].body.length).to.equal(0);

    const d = new FrameDecoder();
    const bytes = Buffer.concat([a, b]);
    const seen = [];
    for (let i = 0; i < bytes.length; i++) seen.push(...d.push(bytes.subarray(i, i + 1)));
    expect(seen.map((f) => f.kind)).to.deep.equal([FrameKind.MESSAGE, FrameKind.PING]);
    expect(seen[0].body.equals(body)).to.equal(true);
    expect(d.pending).to.equal(0);
  });

  it('collects large frames that arrive in pieces in reusable buffers, reused only once given back', function () {
    const buffers = new FrameBuffers(2, 64 * 1024);
    const d = new FrameDecoder(undefined, buffers);
    const frameOf = (fill: number, size: number): Buffer => encodeFrame(FrameKind.MESSAGE, { type: 'block' }, Buffer.alloc(size, fill));
    const inPieces = (f: Buffer) => {
      const out = [];
      for (let at = 0; at < f.length; at += 16 * 1024) out.push(...d.push(f.subarray(at, at + 16 * 1024)));
      return out;
    };
    const [first] = inPieces(frameOf(1, 200_000));
    const [second] = inPieces(frameOf(2, 150_000));
    expect(first.pooled, 'collected in a pooled buffer').to.be.instanceOf(Buffer);
    expect(second.pooled).to.not.equal(first.pooled);
    // Nothing given back yet: both bodies are intact.
    expect(first.body.length === 200_000 && first.body.every((x) => x === 1)).to.equal(true);
    expect(second.body.length === 150_000 && second.body.every((x) => x === 2)).to.equal(true);
    buffers.give(first.pooled!);
    const [third] = inPieces(frameOf(3, 190_000));
    expect(third.pooled, 'the given-back buffer is used again').to.equal(first.pooled);
    expect(third.body.every((x) => x === 3)).to.equal(true);
    expect(second.body.every((x) => x === 2), 'a buffer not given back is never reused').to.equal(true);
    // A small frame, or one that arrives whole, needs no buffer of its own.
    const [small] = inPieces(frameOf(4, 1000));
    const [whole] = d.push(frameOf(5, 100_000));
    expect(small.pooled).to.equal(undefined);
    expect(whole.pooled).to.equal(undefined);
    expect(whole.body.every((x) => x === 5)).to.equal(true);
  });

  it('a body-unchecked message frame: its CRC-32 covers prefix and header; the flag is refused on other kinds', function () {
    const body = Buffer.alloc(5000, 3);
    const f = encodeFrame(FrameKind.MESSAGE, { type: 'block', header: { i: 1 } }, body, undefined, undefined, FRAME_FLAG_BODY_UNCHECKED);
    const [got] = new FrameDecoder().push(f);
    expect(got.flags).to.equal(FRAME_FLAG_BODY_UNCHECKED);
    expect(got.body.equals(body)).to.equal(true);
    expect(f.readUInt32BE(f.length - 4)).to.equal(crc32(f.subarray(0, f.length - 4 - body.length)));
    const header = Buffer.from(f);
    header[FRAME_PREFIX_BYTES + 2] ^= 1;
    expect(codeOf(() => new FrameDecoder().push(header))).to.equal('PIPE_PROTOCOL');
    const plain = encodeFrame(FrameKind.MESSAGE, { type: 'block' }, body);
    expect(new FrameDecoder().push(plain)[0].flags).to.equal(0);
    const flaggedPlain = Buffer.from(plain);
    flaggedPlain[5] = FRAME_FLAG_BODY_UNCHECKED; // a full-CRC frame claiming the flag fails its CRC
    expect(codeOf(() => new FrameDecoder().push(flaggedPlain))).to.equal('PIPE_PROTOCOL');
    const ping = encodeFrame(FrameKind.PING, { seq: 1 });
    ping[5] = FRAME_FLAG_BODY_UNCHECKED;
    expect(codeOf(() => new FrameDecoder().push(ping))).to.equal('PIPE_PROTOCOL');
  });

  it('returns the good frames in front of a bad one, then reports the bad one', function () {
    const good = encodeFrame(FrameKind.MESSAGE, { type: 'kept' });
    const d = new FrameDecoder();
    const frames = d.push(Buffer.concat([good, Buffer.from('garbage garbage garbage')]));
    expect(frames.map((f) => f.header.type)).to.deep.equal(['kept']);
    expect(d.error?.code).to.equal('PIPE_PROTOCOL');
    expect(codeOf(() => d.push(good))).to.equal('PIPE_PROTOCOL');
  });

  it('keeps an unfinished frame as pending bytes', function () {
    const f = encodeFrame(FrameKind.MESSAGE, { type: 'x' }, Buffer.alloc(100));
    const d = new FrameDecoder();
    expect(d.push(f.subarray(0, 50))).to.deep.equal([]);
    expect(d.pending).to.equal(50);
  });

  it('refuses a bad CRC-32, garbage, a wrong format version, reserved bits and unknown kinds', function () {
    const f = encodeFrame(FrameKind.MESSAGE, { type: 'x' }, Buffer.from('payload'));
    const flipped = Buffer.from(f);
    flipped[FRAME_PREFIX_BYTES + 3] ^= 0x01;
    expect(codeOf(() => new FrameDecoder().push(flipped))).to.equal('PIPE_PROTOCOL');
    expect(codeOf(() => new FrameDecoder().push(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')))).to.equal('PIPE_PROTOCOL');
    const v2 = Buffer.from(f);
    v2[3] = 2;
    expect(codeOf(() => new FrameDecoder().push(v2))).to.equal('PIPE_VERSION');
    const reserved = Buffer.from(f);
    reserved[6] = 1;
    expect(codeOf(() => new FrameDecoder().push(reserved))).to.equal('PIPE_PROTOCOL');
    const kind = Buffer.from(f);
    kind[4] = 99;
    expect(codeOf(() => new FrameDecoder().push(kind))).to.equal('PIPE_PROTOCOL');
  });

  it('refuses a header that is not a JSON object, even with a correct CRC', function () {
    for (const text of ['[1,2]', '{"type":', 'null']) {
      const json = Buffer.from(text);
      const g = Buffer.concat([encodeFrame(FrameKind.MESSAGE, {}).subarray(0, FRAME_PREFIX_BYTES), json, Buffer.alloc(4)]);
      g.writeUInt32BE(json.length, 8);
      g.writeUInt32BE(crc32(g.subarray(0, g.length - 4)), g.length - 4);
      expect(codeOf(() => new FrameDecoder().push(g)), text).to.equal('PIPE_PROTOCOL');
    }
  });

  it('refuses an oversize frame from its 16-byte prefix alone, without allocating it', function () {
    const prefix = encodeFrame(FrameKind.MESSAGE, {}).subarray(0, FRAME_PREFIX_BYTES);
    prefix.writeUInt32BE(0xffffffff, 12);
    const big: number[] = [];
    const { allocUnsafe, alloc } = Buffer;
    Buffer.allocUnsafe = (n: number) => (n > 1 << 20 && big.push(n), allocUnsafe.call(Buffer, n));
    Buffer.alloc = ((n: number, ...rest: never[]) => (n > 1 << 20 && big.push(n), alloc.call(Buffer, n, ...rest))) as typeof Buffer.alloc;
    try {
      expect(codeOf(() => new FrameDecoder(1 << 20).push(prefix))).to.equal('PIPE_PROTOCOL');
      const header = Buffer.from(prefix);
      header.writeUInt32BE(0, 12);
      header.writeUInt32BE(MAX_HEADER_BYTES + 1, 8);
      expect(codeOf(() => new FrameDecoder().push(header))).to.equal('PIPE_PROTOCOL');
    } finally {
      Buffer.allocUnsafe = allocUnsafe;
      Buffer.alloc = alloc;
    }
    expect(big).to.deep.equal([]);
  });

  it('mutated frame streams (seeded, 2000 cases) yield good frames or a coded error, never anything else', function () {
    let seed = 0x5eed;
    const rand = (n: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    const stream = Buffer.concat([
      encodeFrame(FrameKind.HELLO, { protocol: 'ferry-pipe', versions: [1], role: 'proxy', name: 'p' }),
      encodeFrame(FrameKind.MESSAGE, { type: 'block', header: { i: 1 } }, Buffer.alloc(300, 1)),
      encodeFrame(FrameKind.PING, { seq: 1 }),
    ]);
    const codes = new Set<string>();
    for (let i = 0; i < 2000; i++) {
      const bytes = Buffer.from(stream);
      for (let k = 1 + rand(3); k > 0; k--) bytes[rand(bytes.length)] = rand(256);
      const d = new FrameDecoder(4096);
      let got = 0;
      try {
        for (let at = 0; at < bytes.length; ) {
          const step = 1 + rand(64);
          got += d.push(bytes.subarray(at, at + step)).length;
          at += step;
        }
      } catch (err) {
        expect(err, `case ${i}`).to.be.instanceOf(FerryError);
        codes.add((err as FerryError).code);
        continue;
      }
      if (d.error) codes.add(d.error.code);
      expect(got, `case ${i}`).to.be.at.most(3);
    }
    expect([...codes].every((c) => c === 'PIPE_PROTOCOL' || c === 'PIPE_VERSION'), [...codes].join()).to.equal(true);
    expect(codes.has('PIPE_PROTOCOL')).to.equal(true);
  });

  it('refuses to send a frame over the limit', function () {
    expect(codeOf(() => encodeFrame(FrameKind.MESSAGE, { type: 'x' }, Buffer.alloc(2048), 1024))).to.equal('PIPE_PROTOCOL');
  });
});

describe('data pipe addresses', function () {
  it('parses host:port and [v6]:port, and formats them back', function () {
    expect(parseAddress('127.0.0.1:0')).to.deep.equal({ host: '127.0.0.1', port: 0 });
    expect(parseAddress('backup-proxy.example:7401')).to.deep.equal({ host: 'backup-proxy.example', port: 7401 });
    expect(parseAddress('[::1]:65535')).to.deep.equal({ host: '::1', port: 65535 });
    expect(formatAddress('::1', 9)).to.equal('[::1]:9');
    expect(formatAddress('10.0.0.1', 9)).to.equal('10.0.0.1:9');
  });

  it('refuses malformed addresses with CLI_USAGE', function () {
    for (const bad of ['', 'host', ':80', 'host:', 'host:65536', '::1:80', '[host]:80', 'a b:1', 'host:-1']) {
      expect(codeOf(() => parseAddress(bad)), bad).to.equal('CLI_USAGE');
    }
  });
});
