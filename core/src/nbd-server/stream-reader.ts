import type { Duplex } from 'node:stream';

/**
 * Exact-length reads from a stream, one at a time (`read(n)` resolves with n bytes, or with
 * undefined when the stream ended cleanly before the first of them). The stream is paused while
 * more than `highWater` bytes wait unread, so a client that sends faster than the server answers
 * is slowed by TCP rather than by memory.
 */
export class StreamReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter?: { n: number; resolve: (b: Buffer | undefined) => void; reject: (e: Error) => void };
  private ended = false;
  private failure?: Error;
  private readonly onData = (chunk: Buffer): void => {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered > this.highWater) this.stream.pause();
    this.wake();
  };
  private readonly onEnd = (): void => {
    this.ended = true;
    this.wake();
  };
  private readonly onError = (err: Error): void => {
    this.failure ??= err;
    this.wake();
  };

  constructor(
    private readonly stream: Duplex,
    private readonly highWater = 64 * 1024 * 1024,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  get pending(): number {
    return this.buffered;
  }

  read(n: number): Promise<Buffer | undefined> {
    if (this.waiter) return Promise.reject(new Error('StreamReader: a read is already pending'));
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
      this.wake();
    });
  }

  /** Stops reading the stream (before it is handed to TLS); returns bytes read but not consumed. */
  detach(): Buffer {
    this.stream.removeListener('data', this.onData);
    this.stream.removeListener('end', this.onEnd);
    this.stream.removeListener('close', this.onEnd);
    this.stream.removeListener('error', this.onError);
    this.stream.pause();
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.buffered = 0;
    return rest;
  }

  private wake(): void {
    const w = this.waiter;
    if (!w) return;
    if (this.buffered >= w.n) {
      this.waiter = undefined;
      w.resolve(this.take(w.n));
      if (this.buffered <= this.highWater / 2 && this.stream.isPaused()) this.stream.resume();
      return;
    }
    if (this.buffered < this.highWater && this.stream.isPaused() && !this.ended) this.stream.resume();
    if (this.failure || this.ended) {
      this.waiter = undefined;
      if (this.buffered === 0 && !this.failure) w.resolve(undefined);
      else w.reject(this.failure ?? new Error(`the connection ended ${w.n - this.buffered} bytes short of a message`));
    }
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}
