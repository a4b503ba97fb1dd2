import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { mkdtempSync, rmSync } from 'node:fs';
import { expect } from 'chai';
import { pushAllocation, type Allocation, type DiskImage } from '../restore-access/disk-image.js';
import { NbdServer } from './nbd-server.js';
import { CMD, ERRNO, IHAVEOPT, OPT, REP, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, REPLY_TYPE, TFLAG } from './nbd-wire.js';

/** 1 MiB: the first half a hole, the second half 0x5a. */
function image(): DiskImage {
  const size = 1024 * 1024;
  return {
    size,
    blockSize: 65536,
    read: async (o, l) => {
      const b = Buffer.alloc(l);
      for (let i = 0; i < l; i++) if (o + i >= size / 2) b[i] = 0x5a;
      return b;
    },
    allocation: (o, l): Allocation[] => {
      const out: Allocation[] = [];
      for (let p = o; p < o + l; ) {
        const next = p < size / 2 ? Math.min(o + l, size / 2) : o + l;
        pushAllocation(out, p, next - p, p < size / 2);
        p = next;
      }
      return out;
    },
    close: async () => undefined,
  };
}

/** A byte-level NBD client: what the reference clients never send is sent here on purpose. */
class RawClient {
  private buf = Buffer.alloc(0);
  private wake?: () => void;
  private constructor(private readonly s: net.Socket) {
    s.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    s.on('close', () => this.wake?.());
  }

  static async connect(sock: string): Promise<RawClient> {
    const s = net.connect(sock);
    await new Promise((r) => s.once('connect', r));
    const c = new RawClient(s);
    await c.take(18);
    s.write(Buffer.from([0, 0, 0, 3])); // fixed newstyle, no zeroes
    return c;
  }

  async take(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.s.destroyed) throw new Error('closed');
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  option(opt: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    IHAVEOPT.copy(h);
    h.writeUInt32BE(opt, 8);
    h.writeUInt32BE(data.length, 12);
    this.s.write(Buffer.concat([h, data]));
  }

  /** One option reply: its type and data. */
  async reply(): Promise<{ type: number; data: Buffer }> {
    const h = await this.take(20);
    return { type: h.readUInt32BE(12), data: await this.take(h.readUInt32BE(16)) };
  }

  request(type: number, offset: number, length: number, payload?: Buffer): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(42, 12);
    h.writeBigUInt64BE(BigInt(offset), 16);
    h.writeUInt32BE(length, 24);
    this.s.write(payload ? Buffer.concat([h, payload]) : h);
  }

  end(): void {
    this.s.destroy();
  }
}

const goData = (name: string): Buffer => Buffer.concat([Buffer.from([0, 0, 0, name.length]), Buffer.from(name), Buffer.from([0, 0])]);

describe('NbdServer: the protocol at the byte level', () => {
  let dir: string;
  let server: NbdServer;
  let sock: string;
  beforeEach(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-nbd-server-'));
    sock = path.join(dir, 's.sock');
    server = new NbdServer({ exports: [{ name: 'disk', image: image(), writable: false }] });
    await server.listen(`unix:${sock}`);
  });
  afterEach(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('answers unknown options with ERR_UNSUP, unknown exports with ERR_UNKNOWN, meta contexts only after structured replies', async () => {
    const c = await RawClient.connect(sock);
    c.option(99);
    expect((await c.reply()).type).to.equal(REP.ERR_UNSUP);
    c.option(OPT.GO, goData('nope'));
    expect((await c.reply()).type).to.equal(REP.ERR_UNKNOWN);
    const meta = Buffer.concat([Buffer.from([0, 0, 0, 4]), Buffer.from('disk'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 15]), Buffer.from('base:allocation')]);
    c.option(OPT.SET_META_CONTEXT, meta);
    expect((await c.reply()).type).to.equal(REP.ERR_INVALID);
    c.option(OPT.STARTTLS);
    expect((await c.reply()).type).to.equal(REP.ERR_POLICY);
    c.option(OPT.LIST);
    const listed = await c.reply();
    expect([listed.type, listed.data.subarray(4, 8).toString()]).to.deep.equal([REP.SERVER, 'disk']);
    expect((await c.reply()).type).to.equal(REP.ACK);
    c.end();
  });

  it('with simple replies: reads return data, writes are EPERM (payload skipped), block status and bad ranges are EINVAL', async () => {
    const c = await RawClient.connect(sock);
    c.option(OPT.GO, goData(''));
    const info = await c.reply();
    expect(info.data.readUInt16BE(10) & TFLAG.READ_ONLY).to.equal(TFLAG.READ_ONLY);
    while ((await c.reply()).type !== REP.ACK);
    c.request(CMD.WRITE, 0, 4096, Buffer.alloc(4096, 1));
    let r = await c.take(16);
    expect([r.readUInt32BE(0), r.readUInt32BE(4)]).to.deep.equal([SIMPLE_REPLY_MAGIC, ERRNO.EPERM]);
    c.request(CMD.READ, 512 * 1024 - 2, 4);
    r = await c.take(16);
    expect(r.readUInt32BE(4)).to.equal(0);
    expect([...(await c.take(4))]).to.deep.equal([0, 0, 0x5a, 0x5a]);
    c.request(CMD.READ, 1024 * 1024 - 2, 4);
    expect((await c.take(16)).readUInt32BE(4)).to.equal(ERRNO.EINVAL);
    c.request(CMD.BLOCK_STATUS, 0, 4096);
    expect((await c.take(16)).readUInt32BE(4)).to.equal(ERRNO.EINVAL);
    c.end();
  });

  it('with structured replies: a read over a hole and data is a hole chunk and a data chunk', async () => {
    const c = await RawClient.connect(sock);
    c.option(OPT.STRUCTURED_REPLY);
    expect((await c.reply()).type).to.equal(REP.ACK);
    c.option(OPT.GO, goData('disk'));
    while ((await c.reply()).type !== REP.ACK);
    c.request(CMD.READ, 512 * 1024 - 4096, 8192);
    const hole = await c.take(20);
    expect([hole.readUInt32BE(0), hole.readUInt16BE(6), hole.readUInt16BE(4)]).to.deep.equal([STRUCTURED_REPLY_MAGIC, REPLY_TYPE.OFFSET_HOLE, 0]);
    const body = await c.take(12);
    expect([Number(body.readBigUInt64BE(0)), body.readUInt32BE(8)]).to.deep.equal([512 * 1024 - 4096, 4096]);
    const data = await c.take(20);
    expect([data.readUInt16BE(6), data.readUInt16BE(4), data.readUInt32BE(16)]).to.deep.equal([REPLY_TYPE.OFFSET_DATA, 1, 8 + 4096]);
    const payload = await c.take(8 + 4096);
    expect(payload.subarray(8).every((b) => b === 0x5a)).to.equal(true);
    c.end();
  });
});
