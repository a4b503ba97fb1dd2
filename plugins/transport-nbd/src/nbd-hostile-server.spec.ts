import net from 'node:net';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { NbdClient } from './nbd-client.js';
import { NbdServerError } from './nbd-errors.js';
import { NBD_REP_ERR_UNKNOWN } from './nbd-protocol.js';
import { chunk, errorChunk, offsetData, simpleReply, startFakeServer, type FakeScript, type FakeServer } from './test-support/fake-nbd-server.js';
import { tempDir } from './test-support/nbd-servers.js';

/** Short enough that a hang fails the 3 s test timeout long before mocha's default would. */
const FAST = { handshakeTimeoutMs: 500, replyTimeoutMs: 400 };

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    if (process.env.SHOW_ERRORS) console.log('        ' + (err as Error).message);
    return err as FerryError;
  }
  throw new Error('expected the promise to reject');
}

/** Answers a read correctly with the byte pattern `offset & 0xff`. */
function goodRead(req: { cookie: Buffer; offset: number; length: number }, s: net.Socket): void {
  const data = Buffer.alloc(req.length, req.offset & 0xff);
  s.write(offsetData(req.cookie, req.offset, data));
}

describe('NbdClient against a hostile server', function () {
  this.timeout(3000);
  let tmp: { dir: string; remove(): void };
  let server: FakeServer | undefined;
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => {
    unhandled.push(reason);
  };

  before(() => process.on('unhandledRejection', onUnhandled));
  after(() => process.removeListener('unhandledRejection', onUnhandled));
  beforeEach(() => {
    tmp = tempDir();
  });
  afterEach(async () => {
    await server?.close();
    server = undefined;
    tmp.remove();
  });

  async function serve(script: FakeScript): Promise<FakeServer> {
    server = await startFakeServer(path.join(tmp.dir, 'fake.sock'), script);
    return server;
  }

  it('refuses bad magic in the greeting with SOURCE_UNREACHABLE naming address and export', async () => {
    const s = await serve({ greeting: Buffer.from('HTTP/1.1 400 Bad Request\r\n') });
    const err = await rejection(NbdClient.connect({ address: s.address, exportName: 'vm1', ...FAST }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain('bad magic').and.contain(s.address).and.contain("export 'vm1'");
  });

  it('gives up on a server that never greets (handshake timeout)', async () => {
    const silent = net.createServer((c) => c.on('error', () => undefined));
    const sock = path.join(tmp.dir, 'silent.sock');
    await new Promise<void>((resolve) => silent.listen(sock, resolve));
    try {
      const t0 = Date.now();
      const err = await rejection(NbdClient.connect({ address: `unix:${sock}`, ...FAST }));
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.contain('did not finish within 500 ms');
      expect(Date.now() - t0).to.be.lessThan(2000);
    } finally {
      silent.close();
    }
  });

  it('reports an unknown export clearly', async () => {
    const s = await serve({ goError: NBD_REP_ERR_UNKNOWN });
    const err = await rejection(NbdClient.connect({ address: s.address, exportName: 'nope', ...FAST }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain("export 'nope'").and.contain('NBD_REP_ERR_UNKNOWN').and.contain('no such export here');
  });

  it('fails every pending request on a bad reply magic, and later requests fast', async () => {
    const s = await serve({ onRequest: (_req, sock) => sock.write(Buffer.concat([Buffer.from('BAD!'), Buffer.alloc(12)])) });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    const errs = await Promise.all([rejection(c.read(0, 512)), rejection(c.read(4096, 512))]);
    for (const e of errs) {
      expect(e.code).to.equal('TRANSPORT_READ_FAILED');
      expect(e.message).to.contain('bad reply magic');
    }
    expect((await rejection(c.read(0, 1))).code).to.equal('TRANSPORT_READ_FAILED');
    await c.close();
  });

  it('treats a reply with a cookie no request has as a broken connection', async () => {
    const s = await serve({ onRequest: (req, sock) => goodRead({ ...req, cookie: Buffer.from('ffffffffffffffff', 'hex') }, sock) });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    const err = await rejection(c.read(0, 512));
    expect(err.message).to.contain('no request in flight');
    await c.close();
  });

  it('fails cleanly when the server sends half a reply and closes', async () => {
    const s = await serve({
      onRequest: (req, sock) => {
        const full = offsetData(req.cookie, req.offset, Buffer.alloc(req.length, 7));
        sock.end(full.subarray(0, 100));
      },
    });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    const err = await rejection(c.read(0, 4096));
    expect(err.code).to.equal('TRANSPORT_READ_FAILED');
    expect(err.message).to.contain('closed the connection in the middle of a reply');
    expect(err.where.offset).to.equal(0);
    await c.close();
  });

  it('refuses an oversize structured reply length', async () => {
    const s = await serve({ onRequest: (req, sock) => sock.write(chunk(req.cookie, 1, 1, Buffer.alloc(8), 0xfffffff0)) });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    expect((await rejection(c.read(0, 512))).message).to.contain('oversize');
    await c.close();
  });

  it('refuses data outside the requested range', async () => {
    const s = await serve({ onRequest: (req, sock) => sock.write(offsetData(req.cookie, req.offset + 4096, Buffer.alloc(req.length))) });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    expect((await rejection(c.read(8192, 512))).message).to.contain('outside the request');
    await c.close();
  });

  it('times out a server that never answers a request', async () => {
    const s = await serve({ onRequest: () => undefined });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    const t0 = Date.now();
    const err = await rejection(c.read(0, 512));
    expect(err.message).to.contain('no reply from the server for 400 ms');
    expect(Date.now() - t0).to.be.within(350, 2000);
    await c.close();
  });

  it('maps a server error to a coded error naming errno and offset, and stays usable', async () => {
    const s = await serve({
      onRequest: (req, sock) => {
        if (req.offset === 65536) sock.write(errorChunk(req.cookie, 5, 'medium error', req.offset + 512));
        else goodRead(req, sock);
      },
    });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    const err = await rejection(c.read(65536, 4096));
    expect(err.code).to.equal('TRANSPORT_READ_FAILED');
    expect(err.message).to.contain('EIO (5)').and.contain('medium error');
    expect(err.where.offset).to.equal(65536 + 512);
    expect(err.cause).to.be.instanceOf(NbdServerError);
    expect((err.cause as NbdServerError).errnoName).to.equal('EIO');
    const ok = await c.read(4096, 100);
    expect(ok.every((b) => b === 0)).to.equal(true); // 4096 & 0xff
    await c.close();
  });

  it('refuses a success that covered only part of the read, and stays usable', async () => {
    const s = await serve({
      onRequest: (req, sock) => {
        if (req.length === 1000) sock.write(offsetData(req.cookie, req.offset, Buffer.alloc(500), true));
        else goodRead(req, sock);
      },
    });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    expect((await rejection(c.read(0, 1000))).message).to.contain('sent 500 of 1000 bytes');
    expect((await c.read(3, 10)).equals(Buffer.alloc(10, 3))).to.equal(true);
    await c.close();
  });

  it('refuses a simple data reply to a read once structured replies are agreed', async () => {
    const s = await serve({ onRequest: (req, sock) => sock.write(simpleReply(req.cookie, 0, Buffer.alloc(req.length))) });
    const c = await NbdClient.connect({ address: s.address, ...FAST });
    expect((await rejection(c.read(0, 64))).message).to.contain('simple reply to NBD_CMD_READ');
    await c.close();
  });

  it('reads simple replies when the server does not offer structured replies', async () => {
    const s = await serve({ structured: false, onRequest: (req, sock) => sock.write(simpleReply(req.cookie, 0, Buffer.alloc(req.length, 9))) });
    const c = await NbdClient.connect({ address: s.address, metaContexts: ['base:allocation'], ...FAST });
    expect(c.structuredReplies).to.equal(false);
    expect(c.metaContexts.size).to.equal(0);
    const got = await Promise.all([c.read(0, 10), c.read(100, 3000)]);
    expect(got[0].equals(Buffer.alloc(10, 9)) && got[1].equals(Buffer.alloc(3000, 9))).to.equal(true);
    expect((await rejection(c.blockStatus(0, 10))).message).to.contain('no meta context');
    await c.close();
  });

  it('clips block status to the asked range and rejects a reply missing a context', async () => {
    const s = await serve({
      contexts: ['base:allocation'],
      onRequest: (req, sock) => {
        const p = Buffer.alloc(4 + 16);
        p.writeUInt32BE(100, 0);
        p.writeUInt32BE(4096, 4); // data
        p.writeUInt32BE(0, 8);
        p.writeUInt32BE(1 << 20, 12); // a hole running far past the request
        p.writeUInt32BE(3, 16);
        sock.write(req.offset === 0 ? chunk(req.cookie, 1, 5, p) : chunk(req.cookie, 1, 0, Buffer.alloc(0)));
      },
    });
    const c = await NbdClient.connect({ address: s.address, metaContexts: ['base:allocation'], ...FAST });
    const got = (await c.blockStatus(0, 8192)).get('base:allocation');
    expect(got).to.deep.equal([
      { offset: 0, length: 4096, flags: 0 },
      { offset: 4096, length: 4096, flags: 3 },
    ]);
    expect((await rejection(c.blockStatus(8192, 4096))).message).to.contain('no block status for meta context base:allocation');
    await c.close();
  });

  it('left no unhandled rejection behind', () => {
    expect(unhandled).to.deep.equal([]);
  });
});
