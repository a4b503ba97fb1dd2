import { FerryError } from '../../errors.js';
import { crc32 } from '../../util/checksums.js';

/**
 * One frame of the data pipe (all integers big-endian; `docs/data-pipe.md` has the table):
 *
 *   0  magic "FRP" + frame format version (1)   4 bytes
 *   4  kind                                     u8
 *   5  flags                                    u8
 *   6  reserved, 0                              u16
 *   8  header length H                          u32
 *  12  body length B                            u32
 *  16  header: UTF-8 JSON object                H bytes
 *  ..  body: opaque bytes                       B bytes
 *  ..  CRC-32 (IEEE) of everything before it    u32
 *      (with flag BODY_UNCHECKED: of bytes 0 .. 16+H-1, prefix and header only)
 *
 * Flags: 0x01 BODY_UNCHECKED, MESSAGE frames only, and only on a connection that agreed on pipe
 * protocol version 2 or later in HELLO (`PipeConnection` refuses it before that). Every other bit
 * is reserved and must be 0.
 * The lengths are checked against the limits before any buffer for the frame is allocated, so a
 * peer cannot make this side reserve memory by claiming a huge frame.
 */
export const FRAME_MAGIC = Buffer.from('FRP', 'latin1');
export const FRAME_FORMAT_VERSION = 1;
export const FRAME_PREFIX_BYTES = 16;
export const FRAME_TRAILER_BYTES = 4;
/** Blocks are at most 8 MiB (MAX_BLOCK_SIZE); batches of hashes and compressed blocks fit well below. */
export const DEFAULT_MAX_FRAME_BYTES = 32 * 1024 * 1024;
/** A JSON header is routing and small facts, never bulk data. */
export const MAX_HEADER_BYTES = 1024 * 1024;

/**
 * The body is not covered by the frame's CRC-32. Pipe protocol version 2 sends message bodies so:
 * TLS authenticates every byte of them already (a CRC-32 beside that catches nothing), an
 * in-memory pair does not corrupt, and what a body holds is checked again by its receiver anyway
 * (block objects by their own CRC-32 and id). It saves a pass over every block on both ends.
 */
export const FRAME_FLAG_BODY_UNCHECKED = 0x01;

export const FrameKind = { HELLO: 1, MESSAGE: 2, PING: 3, PONG: 4, BYE: 5 } as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];
const KINDS = new Set<number>(Object.values(FrameKind));

export interface Frame {
  kind: FrameKind;
  header: Record<string, unknown>;
  body: Buffer;
  /** The `FrameBuffers` buffer the frame was collected in, if it was (given back once the body is used). */
  pooled?: Buffer;
  /** `FRAME_FLAG_*` bits (0: the CRC-32 covered the whole frame). */
  flags: number;
}

/**
 * One frame in one buffer. The body is copied in: `send` resolves while the socket may still hold
 * the frame, and the caller must be free to reuse or transfer its block buffer (to a worker thread)
 * at that moment. One memcpy per block costs a fraction of the TLS encryption that follows.
 */
export function encodeFrame(
  kind: FrameKind,
  header: Record<string, unknown>,
  body?: Uint8Array,
  maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
  /** Where the frame goes (`FrameBuffers.take`): a buffer of at least the frame's size; the frame is its start. */
  alloc: (bytes: number) => Buffer = Buffer.allocUnsafe,
  /** `FRAME_FLAG_*` bits: BODY_UNCHECKED for a MESSAGE on a connection of protocol version 2 or later. */
  flags = 0,
): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const bodyLength = body?.byteLength ?? 0;
  const total = FRAME_PREFIX_BYTES + json.length + bodyLength + FRAME_TRAILER_BYTES;
  if (json.length > MAX_HEADER_BYTES || total > maxFrameBytes) {
    throw new FerryError('PIPE_PROTOCOL', `refusing to send a frame of ${total} bytes (header ${json.length}); the limit is ${maxFrameBytes} bytes (header ${MAX_HEADER_BYTES})`);
  }
  const f = alloc(total).subarray(0, total);
  FRAME_MAGIC.copy(f, 0);
  f.writeUInt8(FRAME_FORMAT_VERSION, 3);
  f.writeUInt8(kind, 4);
  f.writeUInt8(flags, 5);
  f.writeUInt16BE(0, 6);
  f.writeUInt32BE(json.length, 8);
  f.writeUInt32BE(bodyLength, 12);
  json.copy(f, FRAME_PREFIX_BYTES);
  if (body) f.set(body, FRAME_PREFIX_BYTES + json.length);
  const crcAt = total - FRAME_TRAILER_BYTES;
  const covered = flags & FRAME_FLAG_BODY_UNCHECKED ? FRAME_PREFIX_BYTES + json.length : crcAt;
  f.writeUInt32BE(crc32(f.subarray(0, covered)), crcAt);
  return f;
}

/**
 * Reusable memory for large outgoing frames. A fresh buffer per block costs more than the copy into
 * it: new memory is faulted in page by page and the garbage collector runs for it (on the proxy,
 * allocating each frame took as long as encrypting it). A buffer comes back with `give` once the
 * socket has taken the frame (its write callback); one that never comes back is left to the GC.
 */
export class FrameBuffers {
  private readonly free: Buffer[] = [];

  constructor(
    /** Buffers kept for reuse, at most. */
    private readonly keep = 4,
    /** Smaller frames come from Node's own pool (`Buffer.allocUnsafe`). */
    readonly minBytes = 64 * 1024,
  ) {}

  /** A buffer of at least `bytes` (its start is what the caller uses). */
  take(bytes: number): Buffer {
    if (bytes < this.minBytes) return Buffer.allocUnsafe(bytes);
    const i = this.free.findIndex((b) => b.length >= bytes);
    if (i >= 0) return this.free.splice(i, 1)[0];
    // Round up, so frames of slightly different sizes (compressed blocks) fit one buffer.
    return Buffer.allocUnsafeSlow(Math.ceil(bytes / 65536) * 65536);
  }

  /** Returns a buffer `take` gave out (the whole buffer, not the frame's view of it). */
  give(b: Buffer): void {
    if (b.length < this.minBytes || this.free.length >= this.keep) return;
    this.free.push(b);
  }
}

/**
 * Turns a byte stream into frames. Chunks are kept as they came until a whole frame is there, then
 * copied once into a buffer of exactly the frame's size: no quadratic concatenation for big blocks.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** Total size of the frame being collected, once its prefix was read and checked. */
  private need = 0;

  constructor(
    private readonly maxFrameBytes = DEFAULT_MAX_FRAME_BYTES,
    /** Memory for large frames that arrive in pieces (the frame's `pooled`); default: a new buffer each. */
    private readonly buffers?: FrameBuffers,
  ) {}

  /** Set by `take` when the frame it returned lives in a `buffers` buffer. */
  private pooled?: Buffer;

  /** Bytes received that do not yet form a whole frame (non-zero at EOF = truncated frame). */
  get pending(): number {
    return this.buffered;
  }

  /**
   * The fault found behind frames that were still good: `push` returned those, the caller should
   * use them and then end the connection with this error. Later pushes throw it.
   */
  error?: FerryError;

  /** Adds received bytes and returns the frames they complete; throws PIPE_PROTOCOL/PIPE_VERSION. */
  push(chunk: Buffer): Frame[] {
    if (this.error) throw this.error;
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const out: Frame[] = [];
    try {
      for (;;) {
        if (!this.need) {
          if (this.buffered < FRAME_PREFIX_BYTES) return out;
          this.need = checkPrefix(this.peek(FRAME_PREFIX_BYTES), this.maxFrameBytes);
        }
        if (this.buffered < this.need) return out;
        this.pooled = undefined;
        const frame = parseFrame(this.take(this.need));
        if (this.pooled) frame.pooled = this.pooled;
        out.push(frame);
        this.need = 0;
      }
    } catch (err) {
      if (!out.length) throw err;
      this.error = err as FerryError;
      return out;
    }
  }

  private peek(n: number): Buffer {
    // Merge only the leading chunks the prefix spans; the caller made sure `n` bytes are buffered.
    while (this.chunks[0].length < n) this.chunks.splice(0, 2, Buffer.concat([this.chunks[0], this.chunks[1]]));
    return this.chunks[0].subarray(0, n);
  }

  private take(n: number): Buffer {
    const first = this.chunks[0];
    let out: Buffer;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      if (this.buffers && n >= this.buffers.minBytes) {
        this.pooled = this.buffers.take(n);
        out = this.pooled.subarray(0, n);
      } else {
        out = Buffer.allocUnsafe(n);
      }
      for (let copied = 0; copied < n; ) {
        const c = this.chunks[0];
        const k = Math.min(c.length, n - copied);
        c.copy(out, copied, 0, k);
        copied += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    return out;
  }
}

/** Checks magic, version, reserved bits, kind and lengths; returns the whole frame's size. */
function checkPrefix(p: Buffer, maxFrameBytes: number): number {
  if (!p.subarray(0, 3).equals(FRAME_MAGIC)) {
    throw new FerryError('PIPE_PROTOCOL', `not a Ferry pipe frame: it starts with 0x${p.subarray(0, 8).toString('hex')}`);
  }
  const version = p.readUInt8(3);
  if (version !== FRAME_FORMAT_VERSION) {
    throw new FerryError('PIPE_VERSION', `frame format version ${version}; this side reads version ${FRAME_FORMAT_VERSION}`);
  }
  const kind = p.readUInt8(4);
  if (!KINDS.has(kind)) throw new FerryError('PIPE_PROTOCOL', `unknown frame kind ${kind}`);
  const flags = p.readUInt8(5);
  const allowed = kind === FrameKind.MESSAGE ? FRAME_FLAG_BODY_UNCHECKED : 0;
  if ((flags & ~allowed) !== 0 || p.readUInt16BE(6) !== 0) {
    throw new FerryError('PIPE_PROTOCOL', `reserved frame bits set (0x${p.subarray(5, 8).toString('hex')})`);
  }
  const headerLength = p.readUInt32BE(8);
  const bodyLength = p.readUInt32BE(12);
  const total = FRAME_PREFIX_BYTES + headerLength + bodyLength + FRAME_TRAILER_BYTES;
  if (headerLength > MAX_HEADER_BYTES || total > maxFrameBytes) {
    throw new FerryError('PIPE_PROTOCOL', `frame of ${total} bytes announced (header ${headerLength}, body ${bodyLength}); the limit is ${maxFrameBytes} bytes (header ${MAX_HEADER_BYTES})`);
  }
  return total;
}

/** Checks the CRC and parses the header of a whole frame whose prefix passed `checkPrefix`. */
function parseFrame(f: Buffer): Frame {
  const crcAt = f.length - FRAME_TRAILER_BYTES;
  const flags = f.readUInt8(5);
  const headerLength = f.readUInt32BE(8);
  const jsonEnd = FRAME_PREFIX_BYTES + headerLength;
  const want = f.readUInt32BE(crcAt);
  const got = crc32(f.subarray(0, flags & FRAME_FLAG_BODY_UNCHECKED ? jsonEnd : crcAt));
  if (want !== got) {
    throw new FerryError('PIPE_PROTOCOL', `frame CRC-32 mismatch: frame says ${hex32(want)}, content gives ${hex32(got)}`);
  }
  let header: unknown;
  try {
    header = headerLength ? JSON.parse(f.toString('utf8', FRAME_PREFIX_BYTES, jsonEnd)) : {};
  } catch (err) {
    throw new FerryError('PIPE_PROTOCOL', `frame header is not JSON: ${(err as Error).message}`);
  }
  if (header === null || typeof header !== 'object' || Array.isArray(header)) {
    throw new FerryError('PIPE_PROTOCOL', 'frame header is not a JSON object');
  }
  return { kind: f.readUInt8(4) as FrameKind, header: header as Record<string, unknown>, body: f.subarray(jsonEnd, crcAt), flags };
}

function hex32(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
