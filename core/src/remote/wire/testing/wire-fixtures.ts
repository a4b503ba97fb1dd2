import { cp, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls, { type TLSSocket } from 'node:tls';
import assert from 'node:assert/strict';
import { initCerts } from '../certs.js';
import { encodeFrame, FrameDecoder, FrameKind, type Frame } from '../frame.js';
import { makeHello } from '../handshake.js';
import { loadAuth } from '../tls-auth.js';
import { connect, listen } from '../transport.js';
import type { Connection, ListenOptions, Listener, PeerAuth, PeerRole } from '../types.js';

/**
 * Test fixtures for the wire layer's own specs (and the services' specs): certificate folders, an
 * echo listener that records what it refused, and a raw TLS client that can send any bytes.
 */
export interface CertDirs {
  root: string;
  /** Made by `initCerts`: the CA every good peer trusts. */
  good: string;
  /** A second, unrelated CA with the same subject names: a forger's certificates. */
  foreign: string;
  /** The good CA to check the listener with, but the forger's role certificates to present. */
  forged: string;
  cleanup(): Promise<void>;
}

export async function makeCertDirs(): Promise<CertDirs> {
  const root = await mkdtemp(path.join(os.tmpdir(), 'ferry-wire-'));
  const good = path.join(root, 'good');
  const foreign = path.join(root, 'foreign');
  const forged = path.join(root, 'forged');
  await Promise.all([initCerts(good), initCerts(foreign)]);
  await cp(foreign, forged, { recursive: true });
  await cp(path.join(good, 'ca.crt'), path.join(forged, 'ca.crt'));
  return { root, good, foreign, forged, cleanup: () => rm(root, { recursive: true, force: true }) };
}

export function certs(dir: string, role: PeerRole): PeerAuth {
  return { kind: 'certs', dir, role };
}

export interface EchoListener extends Listener {
  address: string;
  /** Errors of refused clients, in order. */
  refused: Error[];
  /** How each accepted connection ended (undefined = orderly). */
  endings: Array<Error | undefined>;
  accepted: Connection[];
  /** Resolves with the next refusal (or rejects after `ms`). */
  nextRefusal(ms?: number): Promise<Error>;
  /** Resolves with how the next accepted connection ends. */
  nextEnding(ms?: number): Promise<Error | undefined>;
}

/** A listener that echoes every message back, recording refusals and how connections ended. */
export async function echoListener(opts: Omit<ListenOptions, 'listen' | 'onConnection' | 'onRefused'> & { listen?: string }): Promise<EchoListener> {
  const refused: Error[] = [];
  const endings: Array<Error | undefined> = [];
  const accepted: Connection[] = [];
  const l = await listen({
    listen: '127.0.0.1:0',
    ...opts,
    onRefused: (err) => refused.push(err),
    onConnection: (c) => {
      accepted.push(c);
      void c.closed.then((e) => endings.push(e));
      void (async () => {
        for await (const m of c) await c.send(m);
      })().catch(() => undefined);
    },
  });
  const waitFor = async <T>(list: T[], from: number, ms: number, what: string): Promise<T> => {
    const deadline = Date.now() + ms;
    while (list.length <= from) {
      if (Date.now() > deadline) throw new Error(`no ${what} within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return list[from];
  };
  let refusalsSeen = 0;
  let endingsSeen = 0;
  return {
    ...l,
    address: `${l.host}:${l.port}`,
    refused,
    endings,
    accepted,
    nextRefusal: (ms = 10_000) => waitFor(refused, refusalsSeen++, ms, 'refusal'),
    nextEnding: (ms = 10_000) => waitFor(endings, endingsSeen++, ms, 'connection ending'),
  };
}

/** Proves the listener still serves: a good client connects, gets its message echoed, closes. */
export async function assertServes(l: EchoListener, auth: PeerAuth): Promise<void> {
  const c = await connect({ address: l.address, auth, timeoutMs: 5_000 });
  const body = Buffer.from('still serving');
  await c.send({ type: 'echo', header: { n: 1 }, body });
  const back = await c.receive();
  assert.equal(back?.type, 'echo');
  assert.ok(back.body && Buffer.from(back.body).equals(body), 'the echoed body differs');
  await c.close();
}

/** A TLS client that speaks raw bytes: for frames a well-behaved peer never sends. */
export class RawClient {
  readonly frames: Frame[] = [];
  readonly ended: Promise<void>;
  private readonly decoder = new FrameDecoder();
  private framesSeen = 0;

  private constructor(readonly socket: TLSSocket) {
    socket.on('data', (d: Buffer) => {
      try {
        this.frames.push(...this.decoder.push(d));
      } catch {
        // A raw client only records what it can read.
      }
    });
    socket.on('error', () => undefined);
    this.ended = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static async open(address: string, auth: PeerAuth): Promise<RawClient> {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    const m = await loadAuth(auth);
    const socket = tls.connect({ ...m.client, host, port });
    await new Promise<void>((resolve, reject) => {
      socket.once('secureConnect', resolve);
      socket.once('error', reject);
    });
    return new RawClient(socket);
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  hello(role: PeerRole, versions?: number[]): void {
    this.write(encodeFrame(FrameKind.HELLO, { ...makeHello(role, `raw-${role}`, versions) }));
  }

  /** Waits for the next frame from the listener (its HELLO, a BYE, a PONG) and returns it. */
  async nextFrame(ms = 5_000): Promise<Frame> {
    const deadline = Date.now() + ms;
    while (this.frames.length <= this.framesSeen) {
      if (Date.now() > deadline) throw new Error(`no frame within ${ms} ms`);
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.frames[this.framesSeen++];
  }
}
