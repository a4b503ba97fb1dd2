import type { Duplex } from 'node:stream';
import type { ErrorLocation, FerryError } from '@ferry/core/plugin';
import type { ByteFeed } from './byte-feed.js';
import { exportLabel, NbdServerError, readFailed } from './nbd-errors.js';
import { NBD_CMD_DISC, NBD_CMD_READ, NBD_REQUEST_HEADER_SIZE, NBD_REQUEST_MAGIC, nbdCommandName, nbdErrnoName, writeU64 } from './nbd-protocol.js';
import { ReplyParser, type InFlight, type ReplySink } from './nbd-replies.js';
import { RequestSlots } from './request-slots.js';

export interface ConnectionOptions {
  address: string;
  exportName: string;
  structuredReplies: boolean;
  maxInFlight: number;
  replyTimeoutMs: number;
}

/** What a request puts on the wire besides its header. */
export interface RequestBody {
  flags?: number;
  /** READ: the buffer the reply fills, exactly `length` bytes. */
  target?: Buffer;
  /** WRITE: the data sent after the header. */
  payload?: Buffer;
}

interface Pending extends InFlight {
  resolve(req: InFlight): void;
  reject(err: FerryError): void;
}

/**
 * The transmission phase of one NBD connection: sends requests with unique cookies, at most
 * `maxInFlight` at a time, and settles each when its reply has arrived in full. A server error fails
 * only its request. A broken stream (protocol violation, close mid-reply, no reply within
 * `replyTimeoutMs`) fails every pending request and every later one with the same FerryError, and
 * the socket is destroyed: nothing waits forever and nothing throws outside a promise.
 */
export class NbdConnection implements ReplySink {
  private readonly pending = new Map<number, Pending>();
  private readonly slots: RequestSlots;
  private readonly parser: ReplyParser;
  private nextCookie = 1;
  private failure: FerryError | undefined;
  private socketError: Error | undefined;
  private lastActivity = Date.now();
  private watchdog: NodeJS.Timeout | undefined;
  private outstanding = 0;
  private drained: (() => void) | undefined;
  private readonly closed: Promise<void>;

  constructor(
    private readonly socket: Duplex,
    feed: ByteFeed,
    leftover: Buffer,
    private readonly opts: ConnectionOptions,
  ) {
    this.slots = new RequestSlots(opts.maxInFlight);
    const parser = (this.parser = new ReplyParser(this, opts.structuredReplies));
    this.closed = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.on('error', (err) => (this.socketError ??= err));
    socket.on('close', () => this.onClose());
    if (leftover.length) parser.push(leftover);
    feed.attach({
      push: (chunk) => {
        this.lastActivity = Date.now();
        parser.push(chunk);
      },
      directRegion: () => parser.directRegion(),
      readLimit: () => parser.readLimit(),
      advanceDirect: (n) => {
        this.lastActivity = Date.now();
        parser.advanceDirect(n);
      },
    });
  }

  /**
   * Sends one request once a slot is free; resolves with it when its last reply chunk arrived.
   * A request counts as outstanding from this call on, so `close` waits for it even while it still
   * waits for a slot.
   */
  async submit(command: number, offset: number, length: number, body: RequestBody = {}): Promise<InFlight> {
    if (this.failure) throw this.failure;
    this.outstanding++;
    try {
      await this.slots.acquire();
      if (this.failure) {
        this.slots.release();
        throw this.failure;
      }
      return await new Promise<InFlight>((resolve, reject) => {
        const cookie = this.takeCookie();
        const req: Pending = { cookie, command, offset, length, target: body.target, covered: [], resolve, reject };
        this.pending.set(cookie, req);
        this.send(command, body.flags ?? 0, cookie, offset, length, body.payload);
        this.lastActivity = Date.now();
        this.armWatchdog();
      });
    } finally {
      if (--this.outstanding === 0) this.drained?.();
    }
  }

  lookup(cookie: number): InFlight | undefined {
    return this.pending.get(cookie);
  }

  complete(req: InFlight): void {
    const p = req as Pending;
    this.pending.delete(p.cookie);
    this.slots.release();
    const err = this.requestError(p);
    if (err) p.reject(err);
    else p.resolve(p);
  }

  fatal(reason: string): void {
    if (this.failure) return;
    const where = { host: this.opts.address };
    this.failure = readFailed(`NBD connection to ${exportLabel(this.opts.exportName)} failed: ${reason}`, where);
    this.slots.close(this.failure);
    for (const p of this.pending.values()) p.reject(this.failure.at({ offset: p.offset }));
    this.pending.clear();
    clearTimeout(this.watchdog);
    this.socket.destroy();
  }

  /**
   * Waits (bounded by the reply timeout) for requests in flight, so callers that gave up on them do
   * not see late rejections, then sends NBD_CMD_DISC and closes the socket.
   */
  async close(): Promise<void> {
    if (this.outstanding && !this.failure) await new Promise<void>((resolve) => (this.drained = resolve));
    const alive = !this.failure;
    this.failure ??= readFailed(`the NBD connection to ${exportLabel(this.opts.exportName)} is closed`, { host: this.opts.address });
    this.slots.close(this.failure);
    clearTimeout(this.watchdog);
    if (alive) {
      this.send(NBD_CMD_DISC, 0, 0, 0, 0);
      this.socket.end();
    } else this.socket.destroy();
    const timer = setTimeout(() => this.socket.destroy(), 2000);
    await this.closed;
    clearTimeout(timer);
  }

  private requestError(p: Pending): FerryError | undefined {
    const e = p.serverError;
    const what = (): string => `${nbdCommandName(p.command)} ${p.offset}+${p.length} of ${exportLabel(this.opts.exportName)}`;
    const where = (): ErrorLocation => ({ host: this.opts.address, offset: e?.offset ?? p.offset });
    if (e) {
      const cause = new NbdServerError(e.errno, p.command, e.message);
      return readFailed(`server error ${nbdErrnoName(e.errno)} on ${what()}${e.message ? `: ${e.message}` : ''}`, where(), cause);
    }
    if (p.command === NBD_CMD_READ) {
      let got = 0;
      for (const [s, t] of p.covered) got += t - s;
      if (got !== p.length) return readFailed(`the server reported success but sent ${got} of ${p.length} bytes for ${what()}`, where());
    }
    return undefined;
  }

  private onClose(): void {
    if (this.failure) return;
    const why = this.socketError ? ` (${this.socketError.message})` : '';
    if (this.pending.size || this.parser.midReply) {
      const mid = this.parser.midReply ? ' in the middle of a reply' : '';
      this.fatal(`the server closed the connection${mid} with ${this.pending.size} request(s) in flight${why}`);
    } else this.fatal(`the server closed the connection${why}`);
  }

  private takeCookie(): number {
    // Cookies are 32-bit counters in the low half of the 64-bit handle; skip any still in flight.
    for (;;) {
      const c = this.nextCookie;
      this.nextCookie = c >= 0xffffffff ? 1 : c + 1;
      if (!this.pending.has(c)) return c;
    }
  }

  private send(command: number, flags: number, cookie: number, offset: number, length: number, payload?: Buffer): void {
    const head = Buffer.allocUnsafe(NBD_REQUEST_HEADER_SIZE);
    head.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
    head.writeUInt16BE(flags, 4);
    head.writeUInt16BE(command, 6);
    head.writeUInt32BE(0, 8);
    head.writeUInt32BE(cookie, 12);
    writeU64(head, offset, 16);
    head.writeUInt32BE(length, 24);
    if (!payload) {
      this.socket.write(head);
      return;
    }
    // Corked, header and data leave in one writev without copying the data.
    this.socket.cork();
    this.socket.write(head);
    this.socket.write(payload);
    this.socket.uncork();
  }

  /** One timer for the connection: it fires when no byte arrived for the timeout while requests wait. */
  private armWatchdog(): void {
    if (this.watchdog) return;
    const check = (): void => {
      this.watchdog = undefined;
      if (!this.pending.size || this.failure) return;
      const idle = Date.now() - this.lastActivity;
      if (idle >= this.opts.replyTimeoutMs) {
        this.fatal(`no reply from the server for ${this.opts.replyTimeoutMs} ms with ${this.pending.size} request(s) in flight`);
      } else this.watchdog = setTimeout(check, this.opts.replyTimeoutMs - idle);
    };
    this.watchdog = setTimeout(check, this.opts.replyTimeoutMs);
  }
}
