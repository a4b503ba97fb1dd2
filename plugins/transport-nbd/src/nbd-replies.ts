import {
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_READ,
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR_OFFSET,
  NBD_REPLY_TYPE_FLAG_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_SIMPLE_REPLY_SIZE,
  NBD_STRUCTURED_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_SIZE,
  nbdCommandName,
  readU64,
} from './nbd-protocol.js';

/** Most block status descriptors Ferry takes in one chunk (servers send far fewer). */
const MAX_STATUS_DESCRIPTORS = 1 << 20;
/** Error chunks: 6 bytes of fields, a message of at most 4096 bytes, an optional offset. */
const MAX_ERROR_CHUNK = 6 + 4096 + 8;

/** One status descriptor of a meta context, at its absolute offset. */
export interface StatusExtent {
  offset: number;
  length: number;
  flags: number;
}

/** An error the server reported for one request; the connection stays usable. */
export interface ServerError {
  errno: number;
  message: string;
  /** From NBD_REPLY_TYPE_ERROR_OFFSET: where inside the request the error happened. */
  offset?: number;
}

/** A request on the wire, as the parser needs to see it. */
export interface InFlight {
  readonly cookie: number;
  readonly command: number;
  readonly offset: number;
  readonly length: number;
  /** READ: where the data lands, exactly `length` bytes. */
  readonly target?: Buffer;
  /** READ: content chunks received so far, as [start, end) relative to `offset`, to refuse overlaps. */
  covered: [number, number][];
  /** BLOCK_STATUS: descriptors per context id. */
  status?: Map<number, StatusExtent[]>;
  serverError?: ServerError;
}

/** What the parser reports back to the client that owns the requests. */
export interface ReplySink {
  lookup(cookie: number): InFlight | undefined;
  /** The request's last reply arrived; `serverError` says whether it failed. */
  complete(req: InFlight): void;
  /** The byte stream can no longer be trusted; every pending request must fail. */
  fatal(reason: string): void;
}

/**
 * Turns the server's byte stream into reply events: simple replies and structured reply chunks,
 * interleaved in any order. READ data is copied from the socket's chunks straight into the
 * request's buffer. Anything the spec forbids (bad magic, unknown cookie, data outside the request,
 * oversize lengths, wrong chunk types) ends parsing with one `fatal` call.
 */
export class ReplyParser {
  private readonly head = Buffer.alloc(NBD_STRUCTURED_REPLY_SIZE);
  private fillBuf: Buffer = this.head;
  private fillPos = 0;
  private fillEnd = 4;
  private dead = false;
  private chunkFlags = 0;
  private chunkType = 0;
  private chunkLength = 0;
  /** The request whose reply is being read (set at its header). */
  private req: InFlight | undefined;
  // The steps, bound once: a reply costs no closure allocations.
  private readonly magicStep = (): void => this.onMagic();
  private readonly simpleStep = (): void => this.onSimple();
  private readonly chunkHeaderStep = (): void => this.onChunkHeader();
  private readonly dataOffsetStep = (): void => this.onDataOffset(this.req!);
  private readonly endChunkStep = (): void => this.endChunk(this.req!);
  private readonly finishStep = (): void => this.finish(this.req!);
  private then: () => void = this.magicStep;

  constructor(
    private readonly sink: ReplySink,
    private readonly structured: boolean,
  ) {}

  /** True between the first byte of a reply and its last: a close now cuts a reply short. */
  get midReply(): boolean {
    return !this.dead && !(this.fillBuf === this.head && this.fillEnd === 4 && this.fillPos === 0);
  }

  push(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.dead) {
      const n = Math.min(this.fillEnd - this.fillPos, chunk.length - at);
      chunk.copy(this.fillBuf, this.fillPos, at, at + n);
      this.fillPos += n;
      at += n;
      if (this.fillPos === this.fillEnd) this.step();
    }
  }

  /** The rest of the buffer being filled, when that is a caller's buffer or a payload (not a header). */
  directRegion(): Buffer | undefined {
    if (this.dead || this.fillBuf === this.head || this.fillPos === this.fillEnd) return undefined;
    return this.fillBuf.subarray(this.fillPos, this.fillEnd);
  }

  /**
   * How far to read while no direct region is due: to the end of the header (or small payload)
   * being filled. A reply's first read takes the longest header that can come before data (a
   * structured chunk header and an OFFSET_DATA offset, 28 bytes; a simple reply's 16), so a READ
   * reply's data is read straight into its buffer, not through the scratch buffer and a copy.
   */
  readLimit(): number {
    if (this.dead) return 0;
    const rest = this.fillEnd - this.fillPos;
    if (this.fillBuf !== this.head) return rest;
    if (this.fillPos === 0 && this.fillEnd === 4) return this.structured ? NBD_STRUCTURED_REPLY_SIZE + 8 : NBD_SIMPLE_REPLY_SIZE;
    return this.fillEnd === NBD_STRUCTURED_REPLY_SIZE ? rest + 8 : rest;
  }

  /** `n` bytes landed in the region `directRegion` returned, without passing through `push`. */
  advanceDirect(n: number): void {
    if (this.dead) return;
    if (this.fillPos + n > this.fillEnd) return this.fail(`read ${n} bytes into a region of ${this.fillEnd - this.fillPos}`);
    this.fillPos += n;
    if (this.fillPos === this.fillEnd) this.step();
  }

  /** Runs completed steps; zero-length steps (empty payloads) chain without waiting for bytes. */
  private step(): void {
    for (let guard = 0; guard < 8 && !this.dead && this.fillPos === this.fillEnd; guard++) {
      try {
        this.then();
      } catch (err) {
        this.fail((err as Error).message);
      }
    }
  }

  private want(buf: Buffer, start: number, length: number, then: () => void): void {
    this.fillBuf = buf;
    this.fillPos = start;
    this.fillEnd = start + length;
    this.then = then;
  }

  private nextReply(): void {
    this.req = undefined;
    this.want(this.head, 0, 4, this.magicStep);
  }

  private fail(reason: string): void {
    if (this.dead) return;
    this.dead = true;
    this.sink.fatal(reason);
  }

  private onMagic(): void {
    const magic = this.head.readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) this.want(this.head, 4, NBD_SIMPLE_REPLY_SIZE - 4, this.simpleStep);
    else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
      if (!this.structured) throw new Error('structured reply chunk although structured replies were not agreed');
      this.want(this.head, 4, NBD_STRUCTURED_REPLY_SIZE - 4, this.chunkHeaderStep);
    } else throw new Error(`bad reply magic 0x${magic.toString(16).padStart(8, '0')}`);
  }

  private request(at: number): InFlight {
    const hi = this.head.readUInt32BE(at);
    const lo = this.head.readUInt32BE(at + 4);
    const req = hi === 0 ? this.sink.lookup(lo) : undefined;
    if (!req) throw new Error(`reply for cookie 0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}, which no request in flight has`);
    this.req = req;
    return req;
  }

  private onSimple(): void {
    const errno = this.head.readUInt32BE(4);
    const req = this.request(8);
    // An error without payload is unambiguous, so it is taken as one even where the spec asks for a
    // structured reply; a success would leave the reader guessing whether data follows.
    if (errno === 0 && req.command === NBD_CMD_READ && this.structured) {
      throw new Error('simple reply to NBD_CMD_READ although structured replies were agreed');
    }
    if (errno === 0 && req.command === NBD_CMD_BLOCK_STATUS) throw new Error('simple success reply to NBD_CMD_BLOCK_STATUS');
    if (errno !== 0) {
      req.serverError = { errno, message: '' };
      return this.finish(req);
    }
    if (req.command === NBD_CMD_READ && req.length > 0) {
      req.covered.push([0, req.length]);
      this.want(req.target!, 0, req.length, this.finishStep);
    } else this.finish(req);
  }

  private onChunkHeader(): void {
    this.chunkFlags = this.head.readUInt16BE(4);
    this.chunkType = this.head.readUInt16BE(6);
    const req = this.request(8);
    this.chunkLength = this.head.readUInt32BE(16);
    const type = this.chunkType;
    const len = this.chunkLength;
    const what = (): string => `${chunkName(type)} chunk of ${len} bytes for ${nbdCommandName(req.command)} ${req.offset}+${req.length}`;
    if (type === NBD_REPLY_TYPE_NONE) {
      if (len !== 0 || !(this.chunkFlags & NBD_REPLY_FLAG_DONE)) throw new Error(`malformed ${what()}`);
      return this.finish(req);
    }
    if (type & NBD_REPLY_TYPE_FLAG_ERROR) {
      if (len < 6 || len > MAX_ERROR_CHUNK) throw new Error(`oversize or truncated ${what()}`);
      return this.wantPayload(len, (p) => this.onError(req, p));
    }
    if (type === NBD_REPLY_TYPE_OFFSET_DATA && req.command === NBD_CMD_READ) {
      if (len < 9 || len - 8 > req.length) throw new Error(`oversize or empty ${what()}`);
      return this.want(this.head, 0, 8, this.dataOffsetStep);
    }
    if (type === NBD_REPLY_TYPE_OFFSET_HOLE && req.command === NBD_CMD_READ) {
      if (len !== 12) throw new Error(`malformed ${what()}`);
      return this.wantPayload(len, (p) => this.onHole(req, p));
    }
    if (type === NBD_REPLY_TYPE_BLOCK_STATUS && req.command === NBD_CMD_BLOCK_STATUS) {
      if (len < 12 || (len - 4) % 8 !== 0 || (len - 4) / 8 > MAX_STATUS_DESCRIPTORS) throw new Error(`oversize or malformed ${what()}`);
      return this.wantPayload(len, (p) => this.onStatus(req, p));
    }
    throw new Error(`unexpected ${what()}`);
  }

  private wantPayload(length: number, then: (payload: Buffer) => void): void {
    const payload = length <= this.head.length ? this.head.subarray(0, length) : Buffer.allocUnsafe(length);
    this.want(payload, 0, length, () => then(payload));
  }

  private onDataOffset(req: InFlight): void {
    const dataLength = this.chunkLength - 8;
    const start = this.relative(req, readU64(this.head, 0), dataLength);
    this.want(req.target!, start, dataLength, this.endChunkStep);
  }

  private onHole(req: InFlight, p: Buffer): void {
    const holeLength = p.readUInt32BE(8);
    if (holeLength === 0) throw new Error('NBD_REPLY_TYPE_OFFSET_HOLE of length 0');
    const start = this.relative(req, readU64(p, 0), holeLength);
    req.target!.fill(0, start, start + holeLength);
    this.endChunk(req);
  }

  /** Checks a content chunk lies inside the request and overlaps no earlier one; its start in the buffer. */
  private relative(req: InFlight, offset: number, length: number): number {
    const start = offset - req.offset;
    const end = start + length;
    if (start < 0 || end > req.length) {
      throw new Error(`content chunk ${offset}+${length} lies outside the request ${req.offset}+${req.length}`);
    }
    if (req.covered.some(([s, e]) => start < e && s < end)) throw new Error(`content chunk ${offset}+${length} overlaps an earlier one`);
    req.covered.push([start, end]);
    return start;
  }

  private onError(req: InFlight, p: Buffer): void {
    const errno = p.readUInt32BE(0);
    const msgLength = p.readUInt16BE(4);
    const withOffset = this.chunkType === NBD_REPLY_TYPE_ERROR_OFFSET;
    if (6 + msgLength + (withOffset ? 8 : 0) > p.length) throw new Error(`error chunk message of ${msgLength} bytes does not fit its chunk`);
    const error: ServerError = { errno, message: p.toString('utf8', 6, 6 + msgLength) };
    if (withOffset) {
      error.offset = readU64(p, 6 + msgLength);
      if (error.offset < req.offset || error.offset >= req.offset + Math.max(1, req.length)) {
        throw new Error(`error offset ${error.offset} lies outside the request ${req.offset}+${req.length}`);
      }
    }
    req.serverError ??= error;
    this.endChunk(req);
  }

  private onStatus(req: InFlight, p: Buffer): void {
    const id = p.readUInt32BE(0);
    const status = (req.status ??= new Map());
    if (status.has(id)) throw new Error(`two block status chunks for meta context ${id}`);
    const extents: StatusExtent[] = [];
    let pos = req.offset;
    for (let at = 4; at < p.length; at += 8) {
      const length = p.readUInt32BE(at);
      if (length === 0) throw new Error('block status descriptor of length 0');
      extents.push({ offset: pos, length, flags: p.readUInt32BE(at + 4) });
      pos += length;
    }
    status.set(id, extents);
    this.endChunk(req);
  }

  private endChunk(req: InFlight): void {
    if (this.chunkFlags & NBD_REPLY_FLAG_DONE) this.finish(req);
    else this.nextReply();
  }

  private finish(req: InFlight): void {
    this.nextReply();
    this.sink.complete(req);
  }
}

function chunkName(type: number): string {
  const names: Record<number, string> = {
    [NBD_REPLY_TYPE_NONE]: 'NBD_REPLY_TYPE_NONE',
    [NBD_REPLY_TYPE_OFFSET_DATA]: 'NBD_REPLY_TYPE_OFFSET_DATA',
    [NBD_REPLY_TYPE_OFFSET_HOLE]: 'NBD_REPLY_TYPE_OFFSET_HOLE',
    [NBD_REPLY_TYPE_BLOCK_STATUS]: 'NBD_REPLY_TYPE_BLOCK_STATUS',
    [NBD_REPLY_TYPE_FLAG_ERROR + 1]: 'NBD_REPLY_TYPE_ERROR',
    [NBD_REPLY_TYPE_ERROR_OFFSET]: 'NBD_REPLY_TYPE_ERROR_OFFSET',
  };
  return names[type] ?? `reply type 0x${type.toString(16)}`;
}
