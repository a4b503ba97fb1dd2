import type net from 'node:net';
import type { Duplex } from 'node:stream';

/** Takes the bytes a connection receives. Chunks are lent: keep a copy of anything needed later. */
export interface ByteConsumer {
  push(chunk: Buffer): void;
  /**
   * Where the next bytes belong, when the consumer already knows (the rest of a READ's data): the
   * socket then reads straight into it. Must be exactly as long as the bytes expected there.
   */
  directRegion?(): Buffer | undefined;
  /** `n` bytes were read into the region `directRegion` returned last. */
  advanceDirect?(n: number): void;
  /**
   * When there is no direct region: how many bytes to read before the consumer may know one (a
   * reply header). Reading no further keeps the data that follows out of the scratch buffer, so it
   * lands in place uncopied. 0 or absent: read as much as the scratch buffer takes.
   */
  readLimit?(): number;
}

/** Smaller regions go through the scratch buffer: one syscall per few KiB costs more than a copy. */
const MIN_DIRECT = 16 * 1024;
const SCRATCH_SIZE = 256 * 1024;

/**
 * The receive side of one connection, handed from the handshake to the reply parser. On a plain
 * socket (`net.connect` with `onread`) the kernel reads into one reusable scratch buffer, no further
 * than the consumer's `readLimit` (the end of a reply header), or, while a READ reply's data is due,
 * directly into the caller's buffer: no allocation per chunk and no copy of the data.
 * Other streams (TLS) feed their 'data' chunks through the same interface.
 */
export class ByteFeed {
  private consumer: ByteConsumer | undefined;
  private held: Buffer[] = [];
  /** Allocated on first use: feeds over TLS streams never need it. */
  private scratch: Buffer | undefined;
  private region: Buffer | undefined;
  private detachStream: (() => void) | undefined;

  /** A feed over a stream's 'data' events (for TLS sockets and anything without `onread`). */
  static fromStream(stream: Duplex): ByteFeed {
    const feed = new ByteFeed();
    const onData = (chunk: Buffer): void => feed.deliver(chunk.length, chunk);
    stream.on('data', onData);
    feed.detachStream = () => {
      stream.pause();
      stream.removeListener('data', onData);
    };
    return feed;
  }

  /** The `onread` options for `net.connect`, which route every read through this feed. */
  onread(): net.OnReadOpts {
    return {
      buffer: () => this.nextBuffer(),
      // `true` keeps the socket reading; a consumer never asks the kernel to wait.
      callback: (n, buf) => {
        this.deliver(n, buf as Buffer);
        return true;
      },
    };
  }

  /** Hands the bytes to `consumer` from now on, first those that arrived while nobody listened. */
  attach(consumer: ByteConsumer | undefined): void {
    this.consumer = consumer;
    if (!consumer) return;
    const held = this.held;
    this.held = [];
    for (const chunk of held) consumer.push(chunk);
  }

  /** Stops a stream-backed feed (the stream is paused); an `onread` feed just holds what comes. */
  stop(): void {
    this.detachStream?.();
    this.consumer = undefined;
  }

  private nextBuffer(): Buffer {
    const consumer = this.consumer;
    const r = consumer?.directRegion?.();
    this.region = r && r.length >= MIN_DIRECT ? r : undefined;
    if (this.region) return this.region;
    const scratch = (this.scratch ??= Buffer.allocUnsafe(SCRATCH_SIZE));
    const limit = consumer?.readLimit?.() ?? 0;
    return limit > 0 && limit < SCRATCH_SIZE ? scratch.subarray(0, limit) : scratch;
  }

  private deliver(n: number, buf: Buffer): void {
    if (n <= 0) return;
    const consumer = this.consumer;
    if (buf === this.region && consumer?.advanceDirect) {
      this.region = undefined;
      consumer.advanceDirect(n);
    } else if (consumer) consumer.push(buf.subarray(0, n));
    else this.held.push(Buffer.from(buf.subarray(0, n)));
  }
}
