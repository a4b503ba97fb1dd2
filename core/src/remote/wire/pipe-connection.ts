import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { ERROR_CODES, FerryError, type ErrorCode } from '../../errors.js';
import { DEFAULT_MAX_FRAME_BYTES, encodeFrame, FRAME_FLAG_BODY_UNCHECKED, FrameBuffers, FrameDecoder, FrameKind, type Frame } from './frame.js';
import { acceptHello, makeHello, PIPE_VERSION, UNCHECKED_BODY_VERSION, type ProvenPeer } from './handshake.js';
import {
  DEFAULT_HEARTBEAT_MS, DEFAULT_TIMEOUT_MS, MISSED_HEARTBEATS,
  type Connection, type PeerInfo, type PeerRole, type WireMessage,
} from './types.js';

export interface PipeOptions {
  /** This side's role and name, sent in HELLO. */
  local: { role: PeerRole; name: string };
  /** The peer's `host:port`, named in every error. */
  address: string;
  heartbeatMs?: number;
  timeoutMs?: number;
  maxFrameBytes?: number;
  /** Turns an error of the stream below (TLS, TCP) into a coded error; `inHello` until HELLO is done. */
  mapError?: (err: Error, inHello: boolean) => FerryError;
}

export interface HandshakeOptions extends PipeOptions {
  /** The client speaks first; the listener answers only when it accepts. */
  initiator: boolean;
  proven: ProvenPeer;
  /** `allow` / `expectRole`: a refusal is sent to the peer in a BYE frame. */
  check: (peer: PeerInfo) => FerryError | undefined;
}

/** Messages queued beyond this pause reading the stream, so a slow consumer slows the sender. */
const RECEIVE_QUEUE_LIMIT = 8;
/** How long an orderly or failed close waits for the peer before the socket is destroyed. */
const LINGER_MS = 2_000;

type State = 'hello' | 'open' | 'closing' | 'ended';

/**
 * A data-pipe connection over any duplex byte stream (a TLS socket, or one half of an in-memory
 * pair): frames, HELLO, heartbeats, backpressure both ways, and coded errors naming the peer.
 */
export class PipeConnection implements Connection {
  peer!: PeerInfo;
  version = 0;
  readonly closed: Promise<Error | undefined>;

  private state: State = 'hello';
  private failure?: FerryError;
  private readonly decoder: FrameDecoder;
  private readonly queue: WireMessage[] = [];
  private readonly waiters: Array<{ resolve: (m: WireMessage | undefined) => void; reject: (e: Error) => void }> = [];
  private readonly drainWaiters: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
  private settleClosed!: (e: Error | undefined) => void;
  private paused = false;
  private heartbeat?: NodeJS.Timeout;
  private rxSinceTick = false;
  private txSinceTick = false;
  private missed = 0;
  private pingSeq = 0;
  private onHello?: (f: Frame) => void;
  /**
   * Outgoing frame memory, reused once the socket took a frame. Only over a socket: it is done with
   * a frame's bytes when its write completes (TLS has encrypted them by then), whereas the other end
   * of an in-memory pair keeps the very buffer it was given.
   */
  private readonly frames?: FrameBuffers;
  /**
   * Incoming frame memory: a large frame arrives in many TLS records and is collected in one buffer,
   * reused once the receiver calls the message's `release`. Enough for the frames a data pipe's
   * window and receive queue hold.
   */
  private readonly received?: FrameBuffers;

  private constructor(private readonly stream: Duplex, private readonly opts: PipeOptions) {
    if (stream instanceof Socket) {
      this.frames = new FrameBuffers();
      this.received = new FrameBuffers(48);
    }
    this.decoder = new FrameDecoder(opts.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES, this.received);
    this.closed = new Promise((resolve) => (this.settleClosed = resolve));
    stream.on('data', (chunk: Buffer) => this.onData(chunk));
    stream.on('end', () => this.onEnd());
    stream.on('error', (err) => this.fail(this.mapStreamError(err), false));
    stream.on('close', () => this.onStreamClose());
  }

  /** Runs HELLO on a fresh stream; rejects (and closes the stream) when the peer is refused. */
  static async open(stream: Duplex, opts: HandshakeOptions): Promise<PipeConnection> {
    const c = new PipeConnection(stream, opts);
    await c.handshake(opts);
    return c;
  }

  /** A connection whose peer is already known (in-memory pairs): no HELLO. */
  static established(stream: Duplex, peer: PeerInfo, opts: PipeOptions): PipeConnection {
    const c = new PipeConnection(stream, opts);
    c.peer = peer;
    c.version = PIPE_VERSION;
    c.state = 'open';
    c.startHeartbeat();
    return c;
  }

  async send(msg: WireMessage): Promise<void> {
    if (typeof msg?.type !== 'string' || !msg.type) {
      throw new FerryError('PIPE_PROTOCOL', 'a message needs a non-empty string type', { host: this.opts.address });
    }
    this.assertWritable();
    const header: Record<string, unknown> = { type: msg.type };
    if (msg.header !== undefined) header.header = msg.header;
    const frames = this.frames;
    const flags = msg.body?.byteLength && this.version >= UNCHECKED_BODY_VERSION ? FRAME_FLAG_BODY_UNCHECKED : 0;
    if (frames && (msg.body?.byteLength ?? 0) >= frames.minBytes) {
      let taken: Buffer | undefined;
      const frame = encodeFrame(FrameKind.MESSAGE, header, msg.body, this.opts.maxFrameBytes, (n) => (taken = frames.take(n)), flags);
      // Given back only when the write succeeded: after an error the socket may still hold it.
      this.write(frame, (err) => !err && frames.give(taken!));
    } else {
      this.write(encodeFrame(FrameKind.MESSAGE, header, msg.body, this.opts.maxFrameBytes, undefined, flags));
    }
    if (this.stream.writableNeedDrain) await this.drain();
  }

  receive(): Promise<WireMessage | undefined> {
    const m = this.queue.shift();
    if (m) {
      if (this.paused && this.queue.length < RECEIVE_QUEUE_LIMIT / 2) {
        this.paused = false;
        this.stream.resume();
      }
      return Promise.resolve(m);
    }
    if (this.failure) return Promise.reject(this.failure);
    if (this.state === 'ended' || this.state === 'closing') return Promise.resolve(undefined);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async close(reason = 'closed'): Promise<void> {
    if (this.state === 'hello' || this.state === 'open') {
      this.state = 'closing';
      this.stopHeartbeat();
      this.flushWaiters();
      this.endWith(FrameKind.BYE, { reason });
      // A paused stream never sees the peer's end, and a socket that is not reading does not keep
      // the process alive: `closed` would never settle (a CLI exited with 13, its await unsettled).
      if (this.paused) {
        this.paused = false;
        this.stream.resume();
      }
    }
    await this.closed;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<WireMessage> {
    for (;;) {
      const m = await this.receive();
      if (m === undefined) return;
      yield m;
    }
  }

  /**
   * HELLO is judged inside the frame loop, before the frames that follow it in the same chunk: a
   * listener may send its first message right behind its HELLO, and that is no protocol error.
   */
  private handshake(opts: HandshakeOptions): Promise<void> {
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const hello = makeHello(opts.local.role, opts.local.name);
    if (opts.initiator) this.write(encodeFrame(FrameKind.HELLO, { ...hello }));
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new FerryError('PIPE_TIMEOUT', `no HELLO from the peer within ${timeoutMs} ms`, { host: opts.address }), true), timeoutMs);
      void this.closed.then((e) => {
        clearTimeout(timer);
        reject(e ?? this.closedError());
      });
      this.onHello = (f) => {
        clearTimeout(timer);
        try {
          const { peer, version } = acceptHello(f.header, opts.proven, opts.address);
          const refusal = opts.check(peer);
          if (refusal) throw refusal;
          this.peer = peer;
          this.version = version;
        } catch (err) {
          return this.fail(err as FerryError, true);
        }
        if (!opts.initiator) this.write(encodeFrame(FrameKind.HELLO, { ...hello }));
        this.state = 'open';
        this.startHeartbeat();
        resolve();
      };
    });
  }

  private onData(chunk: Buffer): void {
    if (this.failure || this.state === 'ended') return;
    this.rxSinceTick = true;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.fail(err instanceof FerryError ? err.at({ host: this.opts.address }) : this.mapStreamError(err as Error), true);
      return;
    }
    for (const f of frames) {
      // onFrame may have ended the connection (BYE, protocol error): drop what follows.
      if (this.failure || (this.state as State) === 'ended') return;
      this.onFrame(f);
    }
    // Good frames in front of a bad one were delivered above; now the bad one ends the connection.
    if (this.decoder.error) this.fail(this.decoder.error.at({ host: this.opts.address }), true);
  }

  private onFrame(f: Frame): void {
    switch (f.kind) {
      case FrameKind.HELLO:
        if (this.state !== 'hello' || !this.onHello) return this.protocolError('a second HELLO');
        this.onHello(f);
        this.onHello = undefined;
        return;
      case FrameKind.MESSAGE:
        if (this.state === 'hello') return this.protocolError('a message before the HELLO handshake completed');
        if (f.flags & FRAME_FLAG_BODY_UNCHECKED && this.version < UNCHECKED_BODY_VERSION) {
          return this.protocolError(`a message whose body the frame's CRC-32 does not cover, on a connection of protocol version ${this.version}`);
        }
        return this.deliver(f);
      case FrameKind.PING:
        if (this.state === 'open') this.write(encodeFrame(FrameKind.PONG, { seq: f.header.seq ?? null }));
        return;
      case FrameKind.PONG:
        return;
      case FrameKind.BYE:
        return this.onBye(f.header);
    }
  }

  private deliver(f: Frame): void {
    const { type, header } = f.header;
    if (typeof type !== 'string' || !type || (header !== undefined && (header === null || typeof header !== 'object' || Array.isArray(header)))) {
      return this.protocolError('a message frame without a type or with a header that is not an object');
    }
    const msg: WireMessage = { type };
    if (header !== undefined) msg.header = header as Record<string, unknown>;
    if (f.body.length) msg.body = f.body;
    const pooled = f.pooled;
    if (pooled && this.received) {
      const received = this.received;
      let given = false;
      msg.release = () => {
        if (given) return;
        given = true;
        received.give(pooled);
      };
    }
    const w = this.waiters.shift();
    if (w) return w.resolve(msg);
    if (this.state === 'closing') return; // after this side's goodbye nothing is read: keep the stream flowing
    this.queue.push(msg);
    if (!this.paused && this.queue.length >= RECEIVE_QUEUE_LIMIT) {
      this.paused = true;
      this.stream.pause();
    }
  }

  /** The peer's goodbye: orderly, or a refusal naming a PIPE_* code. */
  private onBye(h: Record<string, unknown>): void {
    const e = h.error as { code?: unknown; detail?: unknown } | undefined;
    if (e && typeof e === 'object') {
      const code = typeof e.code === 'string' && e.code.startsWith('PIPE_') && e.code in ERROR_CODES ? (e.code as ErrorCode) : 'PIPE_PROTOCOL';
      this.fail(new FerryError(code, `the peer ended the connection: ${String(e.detail ?? e.code)}`, { host: this.opts.address }), false);
      return;
    }
    if (this.state === 'hello') {
      this.fail(new FerryError('PIPE_CLOSED', `the peer closed before HELLO: ${String(h.reason ?? 'no reason given')}`, { host: this.opts.address }), false);
      return;
    }
    this.state = 'ended';
    this.stopHeartbeat();
    this.flushWaiters();
    this.stream.end();
    this.lingerThenDestroy();
  }

  private onEnd(): void {
    if (this.state === 'ended' || this.state === 'closing' || this.failure) return;
    if (this.decoder.pending) {
      // A cut network path ends a TLS socket the same way a peer's own close does (Node reports a
      // TCP FIN without close_notify as a plain end), so an unfinished frame is a drop the services
      // may resume, not a protocol error. Nothing of the partial frame is delivered.
      this.fail(new FerryError('PIPE_CLOSED', `the connection ended inside a frame (${this.decoder.pending} bytes of an unfinished frame): cut or closed by the peer`, { host: this.opts.address }), false);
    } else {
      this.fail(this.closedError(), false);
    }
  }

  private onStreamClose(): void {
    if (this.failure) return;
    if (this.state === 'ended' || this.state === 'closing') {
      this.state = 'ended';
      const err = new FerryError('PIPE_CLOSED', 'the connection was closed while a send waited', { host: this.opts.address });
      for (const d of this.drainWaiters.splice(0)) d.reject(err);
      this.settleClosed(undefined);
      return;
    }
    // Torn down without an orderly end (reset, cut): a network fault, even in the middle of a frame.
    this.fail(this.closedError(), false);
  }

  /**
   * Ends the connection with an error. When this side found the fault (`tell`), the peer gets a
   * BYE naming the code first, so both ends report the same cause.
   */
  private fail(err: FerryError, tell: boolean): void {
    if (this.failure || this.state === 'ended') return;
    if (this.state === 'closing') {
      // This side already said goodbye; a reset now does not make the close a failure.
      this.stream.destroy();
      return;
    }
    this.failure = err;
    this.state = 'ended';
    this.stopHeartbeat();
    for (const w of this.waiters.splice(0)) w.reject(err);
    for (const d of this.drainWaiters.splice(0)) d.reject(err);
    if (tell && this.stream.writable) {
      this.endWith(FrameKind.BYE, { error: { code: err.code, detail: err.detail } });
    } else {
      this.stream.destroy();
    }
    this.settleClosed(err);
  }

  private protocolError(what: string): void {
    this.fail(new FerryError('PIPE_PROTOCOL', `unexpected frame: ${what}`, { host: this.opts.address }), true);
  }

  private closedError(): FerryError {
    if (this.state === 'hello') {
      // Under TLS 1.3 a client finishes its handshake before the listener checks the client's
      // certificate; a listener that refuses it just closes, so this is how the refusal looks here.
      return new FerryError('PIPE_AUTH', 'the peer closed the connection before HELLO: it refused our certificate or key, or is not a Ferry pipe', { host: this.opts.address });
    }
    return new FerryError('PIPE_CLOSED', 'the peer closed the connection without a goodbye', { host: this.opts.address });
  }

  private mapStreamError(err: Error): FerryError {
    if (err instanceof FerryError) return err;
    return this.opts.mapError?.(err, this.state === 'hello') ?? new FerryError('PIPE_CLOSED', `connection failed: ${err.message}`, { host: this.opts.address }, { cause: err });
  }

  private assertWritable(): void {
    if (this.failure) throw this.failure;
    if (this.state !== 'open') {
      throw new FerryError('PIPE_CLOSED', `the connection is ${this.state === 'hello' ? 'not open yet' : 'closed'}`, { host: this.opts.address });
    }
  }

  private write(frame: Buffer, done?: (err?: Error | null) => void): void {
    if (!this.stream.writable) return;
    this.stream.write(frame, done);
    this.txSinceTick = true;
  }

  private endWith(kind: FrameKind, header: Record<string, unknown>): void {
    this.write(encodeFrame(kind, header));
    this.stream.end();
    this.lingerThenDestroy();
  }

  /** A peer that never closes its side cannot hold the socket open for long. */
  private lingerThenDestroy(): void {
    setTimeout(() => this.stream.destroy(), LINGER_MS).unref();
  }

  private drain(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.drainWaiters.push({ resolve, reject });
      if (this.drainWaiters.length === 1) {
        this.stream.once('drain', () => {
          for (const d of this.drainWaiters.splice(0)) d.resolve();
        });
      }
    });
  }

  private flushWaiters(): void {
    for (const w of this.waiters.splice(0)) w.resolve(undefined);
  }

  /**
   * Every interval: ping when nothing was sent, and count an interval without any frame from the
   * peer as missed, unless this side stopped reading itself (its consumer is slow, not the peer).
   */
  private startHeartbeat(): void {
    const ms = this.opts.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.heartbeat = setInterval(() => {
      this.missed = this.rxSinceTick || this.paused ? 0 : this.missed + 1;
      this.rxSinceTick = false;
      if (this.missed >= MISSED_HEARTBEATS) {
        this.fail(new FerryError('PIPE_TIMEOUT', `no frame from the peer for ${MISSED_HEARTBEATS} heartbeats of ${ms} ms`, { host: this.opts.address }), true);
        return;
      }
      if (!this.txSinceTick && !this.stream.writableNeedDrain) this.write(encodeFrame(FrameKind.PING, { seq: ++this.pingSeq }));
      this.txSinceTick = false;
    }, ms);
    this.heartbeat.unref();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}
