import net, { type Server, type Socket } from 'node:net';
import { expect } from 'chai';
import { FerryError } from '../../../errors.js';
import { connect } from '../transport.js';
import { startTcpRelay, type TcpRelay } from './tcp-relay.js';
import { certs, echoListener, makeCertDirs, type CertDirs } from './wire-fixtures.js';

/** A plain TCP echo server on 127.0.0.1. */
async function tcpEcho(): Promise<{ server: Server; address: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const port = (server.address() as net.AddressInfo).port;
  return {
    server,
    address: `127.0.0.1:${port}`,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

/** Sends `data` through the relay and resolves with what came back before the socket closed. */
function roundTrip(relay: TcpRelay, data: Buffer, endAfterEcho: boolean): Promise<{ got: Buffer; closedBy: 'us' | 'relay' }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let got = 0;
    let ended = false;
    const s = net.connect({ host: relay.host, port: relay.port }, () => s.write(data));
    s.on('error', () => undefined);
    s.on('data', (d: Buffer) => {
      chunks.push(d);
      got += d.length;
      if (endAfterEcho && got >= data.length && !ended) {
        ended = true;
        s.end();
      }
    });
    s.on('close', () => resolve({ got: Buffer.concat(chunks), closedBy: ended ? 'us' : 'relay' }));
  });
}

describe('tcp relay (test helper)', function () {
  let echo: Awaited<ReturnType<typeof tcpEcho>>;
  let relay: TcpRelay;
  beforeEach(async function () {
    echo = await tcpEcho();
    relay = await startTcpRelay({ target: echo.address });
  });
  afterEach(async function () {
    await relay.close();
    await echo.close();
  });

  it('relays bytes both ways and counts connections and bytes', async function () {
    const data = Buffer.alloc(300_000, 5);
    const a = await roundTrip(relay, data, true);
    const b = await roundTrip(relay, data.subarray(0, 1000), true);
    expect(a.got.equals(data)).to.equal(true);
    expect(b.got.length).to.equal(1000);
    expect(relay.count).to.equal(2);
    expect(relay.bytes).to.deep.equal({ toTarget: 301_000, fromTarget: 301_000 });
    expect(relay.bytesRelayed).to.equal(602_000);
    expect(relay.cuts).to.equal(0);
  });

  it('cutAfter(n) lets at most n bytes through, then cuts; armed for `times` rounds', async function () {
    relay.cutAfter(50_000, 2);
    const first = await roundTrip(relay, Buffer.alloc(200_000, 1), true);
    expect(first.closedBy).to.equal('relay');
    expect(relay.bytesRelayed).to.equal(50_000);
    expect(first.got.length).to.be.lessThan(50_000);
    const second = await roundTrip(relay, Buffer.alloc(200_000, 2), true);
    expect(second.closedBy).to.equal('relay');
    expect(relay.bytesRelayed).to.equal(100_000);
    expect(relay.cuts).to.equal(2);
    const third = await roundTrip(relay, Buffer.alloc(200_000, 3), true);
    expect(third.closedBy).to.equal('us');
    expect(third.got.length).to.equal(200_000);
  });

  it('cut() drops every open connection; refuseNew drops new ones at once', async function () {
    const s = net.connect({ host: relay.host, port: relay.port });
    s.on('error', () => undefined);
    await new Promise((r) => s.once('connect', r));
    const deadline = Date.now() + 5_000;
    while (relay.open < 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    expect(relay.open).to.equal(1);
    const closed = new Promise((r) => s.once('close', r));
    relay.cut();
    await closed;
    expect(relay.open).to.equal(0);
    relay.refuseNew = true;
    const refused = await roundTrip(relay, Buffer.from('x'), true);
    expect(refused.closedBy).to.equal('relay');
    expect(relay.count).to.equal(2);
  });

  describe('with a TLS data pipe through it', function () {
    let dirs: CertDirs;
    before(async function () {
      dirs = await makeCertDirs();
    });
    after(async function () {
      await dirs?.cleanup();
    });

    it('a cut mid-stream (mid-frame) breaks the connection on both ends as PIPE_CLOSED, the drop the services resume', async function () {
      const l = await echoListener({ auth: certs(dirs.good, 'proxy') });
      const r = await startTcpRelay({ target: l.address });
      try {
        const c = await connect({ address: r.address, auth: certs(dirs.good, 'repository'), expectRole: 'proxy' });
        await c.send({ type: 'x', body: Buffer.alloc(10_000) });
        expect((await c.receive())?.type).to.equal('x');
        r.cutAfter(20_000);
        const sending = (async () => {
          for (let i = 0; i < 100; i++) await c.send({ type: 'block', body: Buffer.alloc(64 * 1024, i) });
        })();
        const err = (await c.closed) as FerryError;
        await sending.catch(() => undefined);
        expect(err).to.be.instanceOf(FerryError);
        expect(err.code).to.equal('PIPE_CLOSED');
        expect(err.message).to.contain(r.address);
        const serverSide = (await l.nextEnding()) as FerryError;
        expect(serverSide.code).to.equal('PIPE_CLOSED');
        expect(r.cuts).to.equal(1);
      } finally {
        await r.close();
        await l.close();
      }
    });
  });
});
