import { connect as tcpConnect } from 'node:net';
import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { encodeFrame, FRAME_FLAG_BODY_UNCHECKED, FRAME_PREFIX_BYTES, FrameKind } from './frame.js';
import { connect } from './transport.js';
import { assertServes, certs, echoListener, makeCertDirs, RawClient, type CertDirs, type EchoListener } from './testing/wire-fixtures.js';

/**
 * Hostile and broken peers against a listener: each is refused with its code, and in the same test a
 * good client is served afterwards (one bad client never stops the service).
 */
describe('data pipe against hostile peers', function () {
  let dirs: CertDirs;
  let l: EchoListener;
  before(async function () {
    dirs = await makeCertDirs();
  });
  after(async function () {
    await dirs?.cleanup();
  });
  beforeEach(async function () {
    l = await echoListener({ auth: certs(dirs.good, 'proxy'), allow: { roles: ['repository'] }, timeoutMs: 2_000, heartbeatMs: 100, maxFrameBytes: 1 << 20 });
  });
  afterEach(async function () {
    await l?.close();
  });

  const good = (): ReturnType<typeof certs> => certs(dirs.good, 'repository');

  async function connectError(p: Promise<unknown>): Promise<FerryError> {
    try {
      await p;
    } catch (err) {
      expect(err).to.be.instanceOf(FerryError);
      return err as FerryError;
    }
    throw new Error('the connection was expected to be refused');
  }

  /** A raw client that passed TLS and HELLO as a repository: what follows is up to the test. */
  async function helloed(): Promise<RawClient> {
    const raw = await RawClient.open(l.address, good());
    raw.hello('repository');
    expect((await raw.nextFrame()).kind).to.equal(FrameKind.HELLO);
    return raw;
  }

  it('a client of another CA (same names) refuses our listener: PIPE_AUTH on both ends', async function () {
    const err = await connectError(connect({ address: l.address, auth: certs(dirs.foreign, 'repository'), timeoutMs: 3_000 }));
    expect(err.code).to.equal('PIPE_AUTH');
    expect(err.message).to.contain(l.address);
    expect((await l.nextRefusal()) as FerryError).to.include({ code: 'PIPE_AUTH' });
    await assertServes(l, good());
  });

  it('a client that trusts the right CA but presents a forged certificate: the listener refuses it, PIPE_AUTH', async function () {
    const err = await connectError(connect({ address: l.address, auth: certs(dirs.forged, 'repository'), timeoutMs: 3_000 }));
    expect(err.code).to.equal('PIPE_AUTH');
    const refusal = (await l.nextRefusal()) as FerryError;
    expect(refusal.code).to.equal('PIPE_AUTH');
    expect(refusal.message).to.match(/certificate/i).and.contain('127.0.0.1');
    expect(l.accepted).to.have.length(0);
    await assertServes(l, good());
  });

  it('a listener with a certificate from another CA: the client refuses it with PIPE_AUTH', async function () {
    const fake = await echoListener({ auth: certs(dirs.foreign, 'proxy') });
    try {
      const err = await connectError(connect({ address: fake.address, auth: good(), timeoutMs: 3_000 }));
      expect(err.code).to.equal('PIPE_AUTH');
      expect(fake.accepted).to.have.length(0);
    } finally {
      await fake.close();
    }
    await assertServes(l, good());
  });

  it('a certificate of a role the listener does not allow: PIPE_AUTH on both ends', async function () {
    const err = await connectError(connect({ address: l.address, auth: certs(dirs.good, 'server') }));
    expect(err.code).to.equal('PIPE_AUTH');
    expect(err.message).to.contain('role server');
    const refusal = (await l.nextRefusal()) as FerryError;
    expect(refusal.code).to.equal('PIPE_AUTH');
    expect(refusal.message).to.contain('127.0.0.1');
    expect(l.accepted).to.have.length(0);
    await assertServes(l, good());
  });

  it('a HELLO claiming another role than the certificate: PIPE_AUTH', async function () {
    const raw = await RawClient.open(l.address, certs(dirs.good, 'server'));
    raw.hello('repository');
    const bye = await raw.nextFrame();
    expect(bye.kind).to.equal(FrameKind.BYE);
    expect(bye.header.error).to.deep.include({ code: 'PIPE_AUTH' });
    expect(((await l.nextRefusal()) as FerryError).message).to.contain('certificate says server');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a plain TCP client (no TLS): PIPE_AUTH, its socket closed', async function () {
    const sock = tcpConnect({ host: l.host, port: l.port });
    sock.on('error', () => undefined);
    await new Promise((r) => sock.once('connect', r));
    sock.write(encodeFrame(FrameKind.HELLO, { protocol: 'ferry-pipe', versions: [1], role: 'repository', name: 'plain' }));
    await new Promise((r) => sock.once('close', r));
    expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_AUTH');
    await assertServes(l, good());
  });

  it('a TCP client that never starts TLS: PIPE_TIMEOUT after the handshake timeout', async function () {
    const sock = tcpConnect({ host: l.host, port: l.port });
    sock.on('error', () => undefined);
    await new Promise((r) => sock.once('close', r));
    expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_TIMEOUT');
    await assertServes(l, good());
  });

  it('garbage right after the TLS handshake, instead of HELLO: PIPE_PROTOCOL', async function () {
    const raw = await RawClient.open(l.address, good());
    raw.write(Buffer.from('this is not a frame, just bytes that keep coming ...'));
    const bye = await raw.nextFrame();
    expect(bye.header.error).to.deep.include({ code: 'PIPE_PROTOCOL' });
    expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_PROTOCOL');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a message before HELLO: PIPE_PROTOCOL (no job data before the handshake)', async function () {
    const raw = await RawClient.open(l.address, good());
    raw.write(encodeFrame(FrameKind.MESSAGE, { type: 'read-task' }));
    expect(((await l.nextRefusal()) as FerryError).message).to.contain('before the HELLO');
    expect(l.accepted).to.have.length(0);
    await raw.ended;
    await assertServes(l, good());
  });

  it('garbage after HELLO: the accepted connection ends with PIPE_PROTOCOL', async function () {
    const raw = await helloed();
    raw.write(Buffer.alloc(64, 0xee));
    const ending = (await l.nextEnding()) as FerryError;
    expect(ending.code).to.equal('PIPE_PROTOCOL');
    expect(ending.message).to.contain('not a Ferry pipe frame');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a truncated frame, then close: PIPE_CLOSED (a drop, which the services resume) naming the unfinished frame', async function () {
    const raw = await helloed();
    const frame = encodeFrame(FrameKind.MESSAGE, { type: 'block' }, Buffer.alloc(10_000, 1));
    raw.socket.end(frame.subarray(0, 5_000));
    const ending = (await l.nextEnding()) as FerryError;
    expect(ending.code).to.equal('PIPE_CLOSED');
    expect(ending.message).to.contain('unfinished frame');
    await assertServes(l, good());
  });

  it('a frame with a bad CRC-32: PIPE_PROTOCOL', async function () {
    const raw = await helloed();
    const frame = encodeFrame(FrameKind.MESSAGE, { type: 'block' }, Buffer.alloc(1000, 7));
    frame[FRAME_PREFIX_BYTES + 40] ^= 0xff;
    raw.write(frame);
    const ending = (await l.nextEnding()) as FerryError;
    expect(ending.code).to.equal('PIPE_PROTOCOL');
    expect(ending.message).to.contain('CRC-32');
    await raw.ended;
    await assertServes(l, good());
  });

  it('an oversize frame length: refused from the prefix alone, the body never sent', async function () {
    const raw = await helloed();
    const prefix = encodeFrame(FrameKind.MESSAGE, {}).subarray(0, FRAME_PREFIX_BYTES);
    prefix.writeUInt32BE(0xfffffff0, 12);
    raw.write(prefix);
    const ending = (await l.nextEnding()) as FerryError;
    expect(ending.code).to.equal('PIPE_PROTOCOL');
    expect(ending.message).to.contain('limit is 1048576 bytes');
    const bye = await raw.nextFrame();
    expect(bye.header.error).to.deep.include({ code: 'PIPE_PROTOCOL' });
    await raw.ended;
    await assertServes(l, good());
  });

  it('a wrong protocol version in HELLO: PIPE_VERSION on both ends', async function () {
    const raw = await RawClient.open(l.address, good());
    raw.hello('repository', [3, 4]);
    const bye = await raw.nextFrame();
    expect(bye.header.error).to.deep.include({ code: 'PIPE_VERSION' });
    expect(String((bye.header.error as { detail: string }).detail)).to.contain('[3, 4]');
    expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_VERSION');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a peer of protocol version 1 gets version 1: full-CRC frames, and a body-unchecked frame is PIPE_PROTOCOL', async function () {
    const raw = await RawClient.open(l.address, good());
    raw.hello('repository', [1]);
    expect((await raw.nextFrame()).kind).to.equal(FrameKind.HELLO);
    const body = Buffer.alloc(3000, 7);
    raw.write(encodeFrame(FrameKind.MESSAGE, { type: 'block' }, body));
    const echo = await raw.nextFrame();
    expect(echo.header.type).to.equal('block');
    expect(echo.flags, 'the listener sends version 1 frames to a version 1 peer').to.equal(0);
    expect(echo.body.equals(body)).to.equal(true);
    raw.write(encodeFrame(FrameKind.MESSAGE, { type: 'block' }, body, undefined, undefined, FRAME_FLAG_BODY_UNCHECKED));
    const bye = await raw.nextFrame();
    expect(bye.kind).to.equal(FrameKind.BYE);
    expect(bye.header.error).to.deep.include({ code: 'PIPE_PROTOCOL' });
    expect(((await l.nextEnding()) as FerryError).message).to.contain('protocol version 1');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a peer of protocol version 2 gets message bodies outside the frame CRC-32, and may send them so', async function () {
    const raw = await RawClient.open(l.address, good());
    raw.hello('repository', [1, 2]);
    expect((await raw.nextFrame()).kind).to.equal(FrameKind.HELLO);
    const body = Buffer.alloc(3000, 9);
    raw.write(encodeFrame(FrameKind.MESSAGE, { type: 'block' }, body, undefined, undefined, FRAME_FLAG_BODY_UNCHECKED));
    const echo = await raw.nextFrame();
    expect(echo.flags).to.equal(FRAME_FLAG_BODY_UNCHECKED);
    expect(echo.body.equals(body)).to.equal(true);
    expect(l.endings).to.have.length(0);
    raw.socket.destroy();
    await assertServes(l, good());
  });

  it('a wrong frame format version: PIPE_VERSION', async function () {
    const raw = await RawClient.open(l.address, good());
    const hello = encodeFrame(FrameKind.HELLO, { protocol: 'ferry-pipe', versions: [1], role: 'repository', name: 'v2' });
    hello[3] = 2;
    raw.write(hello);
    expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_VERSION');
    await raw.ended;
    await assertServes(l, good());
  });

  it('a peer that goes silent after HELLO: PIPE_TIMEOUT after three missed heartbeats', async function () {
    const raw = await helloed();
    const ending = (await l.nextEnding()) as FerryError;
    expect(ending.code).to.equal('PIPE_TIMEOUT');
    expect(ending.message).to.contain('3 heartbeats of 100 ms');
    expect(raw.frames.some((f) => f.kind === FrameKind.PING), 'the listener pinged first').to.equal(true);
    await assertServes(l, good());
  });

  it('a peer that answers pings stays connected while idle', async function () {
    const c = await connect({ address: l.address, auth: good(), heartbeatMs: 100 });
    await new Promise((r) => setTimeout(r, 600));
    await c.send({ type: 'after-idle' });
    expect((await c.receive())?.type).to.equal('after-idle');
    expect(l.endings).to.have.length(0);
    await c.close();
  });
});
