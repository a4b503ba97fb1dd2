import type net from 'node:net';
import type { FerryError } from '@ferry/core/plugin';
import { ByteFeed } from './byte-feed.js';
import { connectNbdEndpoint, formatNbdEndpoint, parseNbdAddress, type NbdEndpoint } from './nbd-address.js';
import { NbdConnection } from './nbd-connection.js';
import { exportLabel, readFailed, unreachable } from './nbd-errors.js';
import { nbdHandshake, NbdRefusal, type BlockSizeConstraints, type HandshakeResult } from './nbd-handshake.js';
import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_DEFAULT_MAX_BLOCK,
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_WRITE_ZEROES,
} from './nbd-protocol.js';
import type { StatusExtent } from './nbd-replies.js';
import type { NbdTlsOptions } from './nbd-tls.js';

export type { StatusExtent } from './nbd-replies.js';
export type { BlockSizeConstraints } from './nbd-handshake.js';

export interface NbdClientOptions {
  /** `unix:/path`, `tcp:host:port`, `nbd://host:port/export`, `nbd+unix:///export?socket=/path`. */
  address: string;
  /** Default: the export a URI address names, else `''` (the server's default export). */
  exportName?: string;
  /** Meta contexts to select, e.g. `base:allocation`, `qemu:dirty-bitmap:NAME`. Default none. */
  metaContexts?: readonly string[];
  /** Start TLS (NBD_OPT_STARTTLS) before any other option; `nbds` URIs need it too. */
  tls?: NbdTlsOptions;
  /** Default true. false stays on simple replies (no block status then). */
  structuredReplies?: boolean;
  /** Connect, TLS and option haggling together. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Longest silence from the server while requests are in flight. Default 30 s. */
  replyTimeoutMs?: number;
  /** Requests on the wire at once. Default 16. */
  maxInFlight?: number;
  /** Largest READ/WRITE request; the server's advertised maximum lowers it. Default 32 MiB. */
  maxRequestBytes?: number;
  /**
   * Largest READ request: longer reads go out as several requests of this size, in flight together.
   * Default 512 KiB (see `READ_REQUEST_BYTES`); `maxRequestBytes` and the server's maximum lower it.
   */
  readRequestBytes?: number;
}

/**
 * Default size of one READ request. qemu-nbd allocates a bounce buffer per request; at 1 MiB glibc
 * maps it fresh most of the time (823 mmap + munmap for 1265 requests), so every request paid 256
 * page faults and the zeroing of its pages: serving the bench's 1162 MiB took qemu-nbd 0.78-0.92
 * core-s in 1 MiB requests, 0.45-0.51 in 512 KiB ones (no mmap), about what it spends for nbdcopy's
 * 256 KiB requests. 512 KiB rather than 256 KiB: half the requests, replies and read syscalls here.
 */
export const READ_REQUEST_BYTES = 512 * 1024;

/** Longest NBD_CMD_BLOCK_STATUS asked in one request: the length field is 32 bits. */
const MAX_STATUS_REQUEST = 0x80000000;
const ZERO_FILL_CHUNK = 1024 * 1024;

/**
 * An NBD client (fixed newstyle, structured replies, meta contexts, TLS) for one export. Reads,
 * writes and block status queries may be issued concurrently; they share one connection with up to
 * `maxInFlight` requests on the wire and are split at the server's maximum request size.
 *
 * Errors are FerryErrors: `SOURCE_UNREACHABLE` from `connect` (naming address and export), and
 * `TRANSPORT_READ_FAILED` from every request (a server error code, with `NbdServerError` as the
 * cause, or a broken connection, which fails every request from then on).
 */
export class NbdClient {
  readonly address: string;
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly structuredReplies: boolean;
  /** Meta contexts the server agreed to, with their ids. */
  readonly metaContexts: ReadonlyMap<string, number>;
  /** Why the server selected no meta context, when it refused NBD_OPT_SET_META_CONTEXT. */
  readonly metaContextRefusal: string | undefined;
  readonly blockSize: BlockSizeConstraints;
  readonly tls: boolean;
  private readonly maxRequest: number;
  private readonly readRequest: number;
  private readonly contextNames = new Map<number, string>();
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly conn: NbdConnection,
    address: string,
    exportName: string,
    hs: HandshakeResult,
    maxRequestBytes: number,
    readRequestBytes: number,
  ) {
    this.address = address;
    this.exportName = exportName;
    this.size = hs.size;
    this.transmissionFlags = hs.transmissionFlags;
    this.structuredReplies = hs.structuredReplies;
    this.metaContexts = hs.metaContexts;
    this.metaContextRefusal = hs.metaContextRefusal;
    this.tls = hs.tls;
    const max = Math.min(hs.blockSize?.maximum ?? NBD_DEFAULT_MAX_BLOCK, maxRequestBytes);
    this.blockSize = { minimum: hs.blockSize?.minimum ?? 1, preferred: hs.blockSize?.preferred ?? 4096, maximum: max };
    // A maximum that is not a multiple of the minimum would misalign every piece after the first.
    this.maxRequest = Math.max(this.blockSize.minimum, max - (max % this.blockSize.minimum));
    const read = Math.min(this.maxRequest, readRequestBytes);
    this.readRequest = Math.max(this.blockSize.minimum, read - (read % this.blockSize.minimum));
    for (const [name, id] of hs.metaContexts) this.contextNames.set(id, name);
  }

  /** Connects and negotiates; throws `SOURCE_UNREACHABLE` naming the address and export on failure. */
  static async connect(opts: NbdClientOptions): Promise<NbdClient> {
    let endpoint: NbdEndpoint;
    try {
      endpoint = parseNbdAddress(opts.address);
    } catch (err) {
      throw unreachable(opts.address, opts.exportName ?? '', (err as Error).message, err);
    }
    const address = formatNbdEndpoint(endpoint);
    const exportName = opts.exportName ?? endpoint.exportName ?? '';
    if (endpoint.tls && !opts.tls) throw unreachable(address, exportName, `${opts.address} asks for TLS but no TLS credentials were given`);
    const readRequestBytes = opts.readRequestBytes ?? READ_REQUEST_BYTES;
    if (!Number.isSafeInteger(readRequestBytes) || readRequestBytes < 1) {
      throw unreachable(address, exportName, `readRequestBytes must be a positive integer, not ${readRequestBytes}`);
    }
    const hs = await handshakeWithin(endpoint, address, exportName, opts);
    const conn = new NbdConnection(hs.socket, hs.feed, hs.leftover, {
      address,
      exportName,
      structuredReplies: hs.structuredReplies,
      maxInFlight: opts.maxInFlight ?? 16,
      replyTimeoutMs: opts.replyTimeoutMs ?? 30_000,
    });
    return new NbdClient(conn, address, exportName, hs, opts.maxRequestBytes ?? NBD_DEFAULT_MAX_BLOCK, readRequestBytes);
  }

  get readOnly(): boolean {
    return (this.transmissionFlags & NBD_FLAG_READ_ONLY) !== 0;
  }
  get canFlush(): boolean {
    return (this.transmissionFlags & NBD_FLAG_SEND_FLUSH) !== 0;
  }
  get canWriteZeroes(): boolean {
    return (this.transmissionFlags & NBD_FLAG_SEND_WRITE_ZEROES) !== 0;
  }
  get canMultiConn(): boolean {
    return (this.transmissionFlags & NBD_FLAG_CAN_MULTI_CONN) !== 0;
  }

  /** Exactly `length` bytes at `offset`, read in pieces of at most the maximum request size. */
  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange('read', offset, length);
    if (length === 0) return Buffer.alloc(0);
    // Unaligned reads on a server with a minimum block size read the aligned range around them.
    const [start, end] = this.aligned(offset, offset + length);
    const buf = Buffer.allocUnsafe(end - start);
    await this.readPieces(buf, start);
    return start === offset && end - start === length ? buf : buf.subarray(offset - start, offset - start + length);
  }

  /**
   * Fills `into` with the bytes at `offset` (the caller's buffer, reused across blocks). A range
   * that is not aligned to the server's minimum block size is read around and copied.
   */
  async readInto(offset: number, into: Uint8Array): Promise<void> {
    this.checkRange('read', offset, into.length);
    if (into.length === 0) return;
    const [start, end] = this.aligned(offset, offset + into.length);
    if (start !== offset || end - start !== into.length) {
      into.set(await this.read(offset, into.length));
      return;
    }
    await this.readPieces(Buffer.from(into.buffer, into.byteOffset, into.byteLength), start);
  }

  /**
   * One NBD_CMD_BLOCK_STATUS for `[offset, offset+length)` (clipped to the export): per agreed meta
   * context, the extents the server reported, in order from `offset`, clipped to the range. A server
   * may describe less than the range; ask again from where the answer ends.
   */
  async blockStatus(offset: number, length: number): Promise<Map<string, StatusExtent[]>> {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length <= 0 || offset >= this.size) {
      throw this.rangeError(`block status of ${length} bytes at ${offset} asks for nothing inside ${exportLabel(this.exportName)} (${this.size} bytes)`, offset);
    }
    if (this.metaContexts.size === 0) {
      throw readFailed(`no meta context was agreed with ${exportLabel(this.exportName)}; block status is unavailable`, { host: this.address, offset });
    }
    const end = Math.min(offset + length, this.size, offset + MAX_STATUS_REQUEST);
    const [start, stop] = this.aligned(offset, end);
    const req = await this.conn.submit(NBD_CMD_BLOCK_STATUS, start, stop - start);
    const out = new Map<string, StatusExtent[]>();
    for (const [name, id] of this.metaContexts) {
      const got = clipExtents(req.status?.get(id) ?? [], offset, end);
      if (!got.length) {
        throw readFailed(`the server sent no block status for meta context ${name} of ${exportLabel(this.exportName)} at ${offset}`, {
          host: this.address,
          offset,
        });
      }
      out.set(name, got);
    }
    return out;
  }

  /** Writes `data` at `offset`; offset and length must respect the server's minimum block size. */
  async write(offset: number, data: Uint8Array): Promise<void> {
    this.checkWritable('write', offset, data.length);
    const buf = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const pieces: Promise<unknown>[] = [];
    for (let pos = 0; pos < buf.length; pos += this.maxRequest) {
      const piece = buf.subarray(pos, pos + this.maxRequest);
      pieces.push(this.conn.submit(NBD_CMD_WRITE, offset + pos, piece.length, { payload: piece }));
    }
    await Promise.all(pieces);
  }

  /** Zeroes a range (NBD_CMD_WRITE_ZEROES, or plain writes of zeros on servers without it). */
  async writeZeroes(offset: number, length: number, opts: { noHole?: boolean } = {}): Promise<void> {
    this.checkWritable('write zeroes', offset, length);
    const step = this.canWriteZeroes ? this.maxRequest : Math.min(this.maxRequest, ZERO_FILL_CHUNK);
    const zeros = this.canWriteZeroes ? undefined : Buffer.alloc(Math.min(step, length));
    const pieces: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; pos += step) {
      const n = Math.min(step, length - pos);
      pieces.push(
        zeros
          ? this.conn.submit(NBD_CMD_WRITE, offset + pos, n, { payload: zeros.subarray(0, n) })
          : this.conn.submit(NBD_CMD_WRITE_ZEROES, offset + pos, n, { flags: opts.noHole ? NBD_CMD_FLAG_NO_HOLE : 0 }),
      );
    }
    await Promise.all(pieces);
  }

  /** Makes completed writes durable; a no-op on servers that do not offer NBD_CMD_FLUSH (no cache). */
  async flush(): Promise<void> {
    if (this.canFlush) await this.conn.submit(NBD_CMD_FLUSH, 0, 0);
  }

  /** Waits for requests in flight, sends NBD_CMD_DISC and closes the socket. Safe to call twice. */
  close(): Promise<void> {
    this.closing ??= this.conn.close();
    return this.closing;
  }

  private async readPieces(buf: Buffer, offset: number): Promise<void> {
    const pieces: Promise<unknown>[] = [];
    for (let pos = 0; pos < buf.length; pos += this.readRequest) {
      const target = buf.subarray(pos, pos + this.readRequest);
      pieces.push(this.conn.submit(NBD_CMD_READ, offset + pos, target.length, { target }));
    }
    await Promise.all(pieces);
  }

  private aligned(start: number, end: number): [number, number] {
    const min = this.blockSize.minimum;
    if (min <= 1) return [start, end];
    return [start - (start % min), Math.min(this.size, Math.ceil(end / min) * min)];
  }

  private checkRange(what: string, offset: number, length: number): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.size) {
      throw this.rangeError(`${what} of ${length} bytes at ${offset} is outside ${exportLabel(this.exportName)} (${this.size} bytes)`, offset);
    }
  }

  private checkWritable(what: string, offset: number, length: number): void {
    this.checkRange(what, offset, length);
    if (this.readOnly) throw this.rangeError(`${exportLabel(this.exportName)} is read-only; ${what} refused`, offset);
    const min = this.blockSize.minimum;
    if (offset % min || length % min) throw this.rangeError(`${what} of ${length} bytes at ${offset} is not aligned to the server's ${min}-byte blocks`, offset);
  }

  private rangeError(detail: string, offset: number): FerryError {
    return readFailed(detail, { host: this.address, offset });
  }
}

/** Drops what lies before `start`, trims the first and last extent to `[start, end)`. */
function clipExtents(extents: StatusExtent[], start: number, end: number): StatusExtent[] {
  const out: StatusExtent[] = [];
  for (const e of extents) {
    const s = Math.max(e.offset, start);
    const t = Math.min(e.offset + e.length, end);
    if (t > s) out.push({ offset: s, length: t - s, flags: e.flags });
    if (e.offset + e.length >= end) break;
  }
  return out;
}

/** Connect + handshake under one deadline; any failure closes the socket and names address and export. */
async function handshakeWithin(endpoint: NbdEndpoint, address: string, exportName: string, opts: NbdClientOptions): Promise<HandshakeResult> {
  const timeoutMs = opts.handshakeTimeoutMs ?? 10_000;
  const started = Date.now();
  // A TLS layer must read the raw socket itself, so only plain connections use `onread`.
  const plainFeed = opts.tls ? undefined : new ByteFeed();
  let socket: net.Socket;
  try {
    socket = await connectNbdEndpoint(endpoint, timeoutMs, plainFeed?.onread());
  } catch (err) {
    throw unreachable(address, exportName, `cannot connect: ${errText(err)}`, err);
  }
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`the handshake did not finish within ${timeoutMs} ms`)), Math.max(0, timeoutMs - (Date.now() - started)));
  });
  const hostname = endpoint.kind === 'tcp' ? endpoint.host : 'localhost';
  const run = nbdHandshake(socket, plainFeed ?? ByteFeed.fromStream(socket), {
    exportName,
    metaContexts: opts.metaContexts ?? [],
    structuredReplies: opts.structuredReplies ?? true,
    tls: opts.tls,
    tlsDefaultHostname: hostname,
  });
  try {
    return await Promise.race([run, deadline]);
  } catch (err) {
    // A refusal was answered with NBD_OPT_ABORT by the handshake; give the server a moment to
    // read it. Anything else (a timeout, a protocol violation) is a hard disconnect.
    if (err instanceof NbdRefusal) setTimeout(() => socket.destroy(), 200).unref();
    else socket.destroy();
    run.catch(() => undefined); // the losing side of the race must not become an unhandled rejection
    throw unreachable(address, exportName, errText(err), err);
  } finally {
    clearTimeout(timer);
  }
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e?.code && e.message && !e.message.includes(e.code)) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(err);
}
