import { randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { encodeFrame, FrameKind } from './frame.js';
import { makeHello } from './handshake.js';
import { connectionPair } from './memory-pair.js';
import { loadAuth } from './tls-auth.js';
import { connect, listen } from './transport.js';
import { assertServes, certs, echoListener, makeCertDirs, type CertDirs } from './testing/wire-fixtures.js';
import type { Connection } from './types.js';

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('expected a rejection');
}

/** Lets timers and I/O run for a while; used only to give a wrongly unbounded sender the chance to run ahead. */
const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('data pipe connections (in memory)', function () {
  it('carries type, header and body both ways and ends with undefined after an orderly close', async function () {
    const [a, b] = connectionPair();
    expect(a.peer.role).to.equal('proxy');
    expect(b.peer.role).to.equal('repository');
    const body = randomBytes(100_000);
    await a.send({ type: 'block', header: { index: 3, hash: 'ab' }, body });
    await a.send({ type: 'done' });
    const got: Array<{ type: string; header?: unknown; size: number }> = [];
    const reader = (async () => {
      for await (const m of b) got.push({ type: m.type, header: m.header, size: m.body?.byteLength ?? 0 });
    })();
    await b.send({ type: 'ack' });
    expect((await a.receive())?.type).to.equal('ack');
    await a.close('finished');
    await reader;
    expect(got).to.deep.equal([{ type: 'block', header: { index: 3, hash: 'ab' }, size: 100_000 }, { type: 'done', header: undefined, size: 0 }]);
    expect(await a.closed).to.equal(undefined);
    expect(await b.closed).to.equal(undefined);
    expect(await b.receive()).to.equal(undefined);
    expect((await rejection(b.send({ type: 'late' }))).code).to.equal('PIPE_CLOSED');
  });

  it('slows the sender while the receiver does not read (backpressure), then delivers everything in order', async function () {
    const [a, b] = connectionPair();
    const total = 64;
    let sent = 0;
    const sender = (async () => {
      for (let i = 0; i < total; i++) {
        await a.send({ type: 'block', header: { i }, body: Buffer.alloc(256 * 1024, i) });
        sent++;
      }
    })();
    await pause(200);
    expect(sent, 'sends resolved without a reader').to.be.lessThan(total / 2);
    for (let i = 0; i < total; i++) {
      const m = await b.receive();
      expect(m?.header).to.deep.equal({ i });
      expect(m?.body?.[0]).to.equal(i & 0xff);
    }
    await sender;
    expect(sent).to.equal(total);
    await a.close();
  });

  it('closes at once while its receive queue is full and the peer still sends (no wait for the linger timeout)', async function () {
    const [a, b] = connectionPair();
    const sender = (async () => {
      for (let i = 0; i < 64; i++) await a.send({ type: 'block', header: { i }, body: Buffer.alloc(256 * 1024, i) });
    })().catch(() => undefined);
    await pause(100); // b reads nothing: its queue fills and its stream pauses
    const t0 = performance.now();
    await b.close('giving up');
    expect(performance.now() - t0, 'a paused stream must still see the peer end').to.be.lessThan(1000);
    await sender;
    await a.close();
  });

  it('stays up while idle (pings answered) and fails with PIPE_CLOSED when the other end vanishes', async function () {
    const [a, b] = connectionPair({ heartbeatMs: 20 });
    await pause(200);
    await a.send({ type: 'still-there' });
    expect((await b.receive())?.type).to.equal('still-there');
    const pending = b.receive();
    (a as unknown as { stream: { destroy(): void } }).stream.destroy();
    expect((await rejection(pending)).code).to.equal('PIPE_CLOSED');
    expect(((await b.closed) as FerryError).code).to.equal('PIPE_CLOSED');
  });

  it('a body changed or transferred after send resolved still arrives as it was sent', async function () {
    const [a, b] = connectionPair();
    const body = new Uint8Array(64 * 1024).fill(7);
    await a.send({ type: 'block', body });
    body.fill(9);
    const moved = new Uint8Array(1024).fill(5);
    await a.send({ type: 'block', body: moved });
    structuredClone(moved.buffer, { transfer: [moved.buffer] });
    expect(moved.byteLength, 'the buffer was transferred').to.equal(0);
    const first = await b.receive();
    const second = await b.receive();
    expect(first?.body?.every((x) => x === 7)).to.equal(true);
    expect(second?.body?.byteLength).to.equal(1024);
    expect(second?.body?.every((x) => x === 5)).to.equal(true);
    await a.close();
  });

  it('refuses a message without a type', async function () {
    const [a] = connectionPair();
    expect((await rejection(a.send({ type: '' }))).code).to.equal('PIPE_PROTOCOL');
    await a.close();
  });
});

describe('data pipe connections (mutual TLS on 127.0.0.1)', function () {
  let dirs: CertDirs;
  before(async function () {
    dirs = await makeCertDirs();
  });
  after(async function () {
    await dirs?.cleanup();
  });

  it('authenticates both sides by certificate and takes the roles from the certificates', async function () {
    const l = await echoListener({ auth: certs(dirs.good, 'proxy'), allow: { roles: ['repository'] } });
    try {
      const c = await connect({ address: l.address, auth: certs(dirs.good, 'repository'), expectRole: 'proxy' });
      expect(c.peer).to.deep.equal({ role: 'proxy', name: 'proxy', address: l.address });
      expect(c.version).to.equal(2);
      const body = randomBytes(4 * 1024 * 1024);
      await c.send({ type: 'blocks', header: { n: 1 }, body });
      const back = await c.receive();
      expect(back?.header).to.deep.equal({ n: 1 });
      expect(Buffer.from(back!.body!).equals(body)).to.equal(true);
      expect(l.accepted[0].peer.role).to.equal('repository');
      await c.close();
      expect(await c.closed).to.equal(undefined);
      expect(await l.nextEnding()).to.equal(undefined);
    } finally {
      await l.close();
    }
  });

  it('a client refuses a listener of the wrong role (expectRole) with PIPE_AUTH', async function () {
    const l = await echoListener({ auth: certs(dirs.good, 'repository') });
    try {
      const err = await rejection(connect({ address: l.address, auth: certs(dirs.good, 'server'), expectRole: 'proxy' }));
      expect(err.code).to.equal('PIPE_AUTH');
      expect(err.message).to.contain(l.address).and.contain('role repository');
      expect(((await l.nextEnding()) as FerryError).code).to.equal('PIPE_AUTH');
      await assertServes(l, certs(dirs.good, 'server'));
    } finally {
      await l.close();
    }
  });

  it('a message right behind the listener\'s HELLO, in the same TLS record, is delivered', async function () {
    const m = await loadAuth(certs(dirs.good, 'proxy'));
    const server = tls.createServer(m.server, (socket) => {
      socket.once('data', () => {
        socket.write(Buffer.concat([
          encodeFrame(FrameKind.HELLO, { ...makeHello('proxy', 'eager') }),
          encodeFrame(FrameKind.MESSAGE, { type: 'first', header: { n: 1 } }),
        ]));
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const c = await connect({ address: `127.0.0.1:${(server.address() as { port: number }).port}`, auth: certs(dirs.good, 'repository') });
      expect(await c.receive()).to.deep.equal({ type: 'first', header: { n: 1 } });
      await c.close();
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('over TLS too, a receiver that does not read holds the sender back (send waits for drain)', async function () {
    let server: Connection | undefined;
    const l = await listen({ listen: '127.0.0.1:0', auth: certs(dirs.good, 'repository'), onConnection: (c) => (server = c) });
    try {
      const c = await connect({ address: `127.0.0.1:${l.port}`, auth: certs(dirs.good, 'proxy') });
      const total = 96;
      let sent = 0;
      const sender = (async () => {
        for (let i = 0; i < total; i++) {
          await c.send({ type: 'block', header: { i }, body: Buffer.alloc(1024 * 1024, i) });
          sent++;
        }
      })();
      await pause(500);
      expect(sent, 'MiB accepted while nobody reads').to.be.lessThan(total / 2);
      for (let i = 0; i < total; i++) expect((await server!.receive())?.header).to.deep.equal({ i });
      await sender;
      await c.close();
    } finally {
      await l.close();
    }
  });

  it('over TLS, large frames reuse their memory on both ends and every body arrives as it was sent', async function () {
    let server: Connection | undefined;
    const l = await listen({ listen: '127.0.0.1:0', auth: certs(dirs.good, 'repository'), onConnection: (c) => (server = c) });
    try {
      const c = await connect({ address: `127.0.0.1:${l.port}`, auth: certs(dirs.good, 'proxy') });
      const sizes = [300_000, 700_000, 120_000, 1_048_622, 65_536, 500_000];
      const bodyOf = (i: number): Buffer => {
        const b = Buffer.alloc(sizes[i % sizes.length]);
        for (let k = 0; k < b.length; k += 4096) b.writeUInt32BE((i << 20) + k, k);
        return b;
      };
      // The sender reuses one buffer for every body, as a source mover's slots do.
      const scratch = Buffer.alloc(1_048_622);
      const sender = (async () => {
        for (let i = 0; i < 40; i++) {
          const want = bodyOf(i);
          want.copy(scratch);
          await c.send({ type: 'block', header: { i }, body: scratch.subarray(0, want.length) });
          scratch.fill(0xee);
        }
      })();
      const check = (m: Awaited<ReturnType<Connection['receive']>>, i: number): void => {
        expect(m?.header).to.deep.equal({ i });
        expect(Buffer.from(m!.body!).equals(bodyOf(i)), `body ${i}`).to.equal(true);
      };
      await pause(50);
      // Held while more arrive (as the repository service's window holds blocks), then released
      // one by one as they are used: the memory of a released frame is taken by later ones, and the
      // ones still held must stay intact meanwhile.
      const held: { i: number; m: Awaited<ReturnType<Connection['receive']>> }[] = [];
      for (let i = 0; i < 12; i++) held.push({ i, m: await server!.receive() });
      let releasable = 0;
      for (let i = 12; i < 40; i++) {
        const m = await server!.receive();
        check(m, i);
        for (const h of held) check(h.m, h.i);
        const done = held.shift()!;
        if (done.m?.release) releasable++;
        done.m?.release?.();
        held.push({ i, m });
      }
      for (const h of held) check(h.m, h.i);
      expect(releasable, 'large frames were collected in reusable memory').to.be.greaterThan(20);
      await sender;
      await c.close();
    } finally {
      await l.close();
    }
  });

  it('a peer that accepts TCP but never answers: PIPE_TIMEOUT after timeoutMs; an abort signal ends the wait too', async function () {
    const silent = net.createServer((s) => s.on('error', () => undefined));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    const address = `127.0.0.1:${(silent.address() as net.AddressInfo).port}`;
    try {
      const slow = await rejection(connect({ address, auth: certs(dirs.good, 'server'), timeoutMs: 300 }));
      expect(slow.code).to.equal('PIPE_TIMEOUT');
      expect(slow.message).to.contain(address);
      const ac = new AbortController();
      setTimeout(() => ac.abort(new Error('session stopped')), 100);
      const aborted = await rejection(connect({ address, auth: certs(dirs.good, 'server'), signal: ac.signal }));
      expect(aborted.code).to.equal('PIPE_CLOSED');
      expect(aborted.message).to.contain('session stopped');
    } finally {
      silent.close();
    }
  });

  it('a listener whose handler throws drops that client and keeps serving', async function () {
    let calls = 0;
    const l = await listen({
      listen: '127.0.0.1:0',
      auth: certs(dirs.good, 'proxy'),
      onConnection: (c) => {
        if (++calls === 1) throw new Error('handler broke');
        void (async () => {
          for await (const m of c) await c.send(m);
        })().catch(() => undefined);
      },
    });
    try {
      const first = await connect({ address: `127.0.0.1:${l.port}`, auth: certs(dirs.good, 'repository') });
      expect(await first.receive()).to.equal(undefined);
      const second = await connect({ address: `127.0.0.1:${l.port}`, auth: certs(dirs.good, 'repository') });
      await second.send({ type: 'ping-app' });
      expect((await second.receive())?.type).to.equal('ping-app');
      await second.close();
    } finally {
      await l.close();
    }
  });

  it('PIPE_UNREACHABLE for a port nobody listens on', async function () {
    const l = await listen({ listen: '127.0.0.1:0', auth: certs(dirs.good, 'proxy'), onConnection: () => undefined });
    const address = `127.0.0.1:${l.port}`;
    await l.close();
    const err = await rejection(connect({ address, auth: certs(dirs.good, 'repository') }));
    expect(err.code).to.equal('PIPE_UNREACHABLE');
    expect(err.message).to.contain(address);
  });

  it('listens on ::1 too and closes accepted connections when the listener closes', async function () {
    const l = await echoListener({ listen: '[::1]:0', auth: certs(dirs.good, 'repository') });
    const c: Connection = await connect({ address: `[::1]:${l.port}`, auth: certs(dirs.good, 'server') });
    expect(c.peer.address).to.equal(`[::1]:${l.port}`);
    await l.close();
    expect(await c.receive()).to.equal(undefined);
    expect(await c.closed).to.equal(undefined);
  });

  it('CERTS_FAILED before connecting when a key does not belong to its certificate', async function () {
    const { cp } = await import('node:fs/promises');
    const mixed = `${dirs.root}/mixed`;
    await cp(dirs.good, mixed, { recursive: true });
    await cp(`${dirs.foreign}/server.key`, `${mixed}/server.key`);
    const err = await rejection(connect({ address: '127.0.0.1:1', auth: certs(mixed, 'server') }));
    expect(err.code).to.equal('CERTS_FAILED');
  });
});
