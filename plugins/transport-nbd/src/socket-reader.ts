import type { Duplex } from 'node:stream';
import type { ByteConsumer, ByteFeed } from './byte-feed.js';

/**
 * Exact-length reads for the handshake, where each step waits for the server's answer before the
 * next. One read at a time. When the stream closes or fails, the pending read and every later one
 * reject, so a handshake can never wait on a dead connection.
 */
export class SocketReader implements ByteConsumer {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private failure: Error | undefined;
  private readonly onEnd = (): void => this.fail(new Error('the server closed the connection'));
  private readonly onError = (err: Error): void => this.fail(err);

  constructor(
    private readonly stream: Duplex,
    private readonly feed: ByteFeed,
  ) {
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
    feed.attach(this);
  }

  push(chunk: Buffer): void {
    // Chunks are lent by the feed; the handshake is small, so a copy costs nothing worth saving.
    this.chunks.push(Buffer.from(chunk));
    this.buffered += chunk.length;
    this.wake();
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('SocketReader: a read is already pending'));
    if (this.buffered >= n) return Promise.resolve(this.take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  /** Stops consuming and hands back what arrived beyond the handshake (nothing, from a sound server). */
  detach(): Buffer {
    this.feed.attach(undefined);
    this.stream.removeListener('end', this.onEnd);
    this.stream.removeListener('close', this.onEnd);
    this.stream.removeListener('error', this.onError);
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  /** Fails the pending read (the stream ended, failed, or the caller gave up). */
  fail(err: Error): void {
    this.failure ??= err;
    const w = this.waiter;
    if (w && this.buffered < w.n) {
      this.waiter = undefined;
      w.reject(this.failure);
    }
  }

  private wake(): void {
    const w = this.waiter;
    if (!w || this.buffered < w.n) return;
    this.waiter = undefined;
    w.resolve(this.take(w.n));
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}
