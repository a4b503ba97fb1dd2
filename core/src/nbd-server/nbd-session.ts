import type { Socket } from 'node:net';
import type { TLSSocket, TlsOptions } from 'node:tls';
import { FerryError } from '../errors.js';
import type { Allocation } from '../restore-access/disk-image.js';
import { isWritable, type NbdExport } from './nbd-export.js';
import { StreamReader } from './stream-reader.js';
import { chunkHeader, Disconnect, simpleHeader, u16, u32, u64, upgrade } from './nbd-frames.js';
import {
  BASE_ALLOCATION,
  CMD,
  CMD_FLAG,
  ERRNO,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  INFO,
  MAX_OPTION,
  MAX_PAYLOAD,
  NBDMAGIC,
  OPT,
  PREFERRED_BLOCK,
  REP,
  REPLY_FLAG_DONE,
  REPLY_MAGIC,
  REPLY_TYPE,
  REQUEST_MAGIC,
  REQUEST_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  TFLAG,
} from './nbd-wire.js';

/** What a connection needs from its server. */
export interface SessionHost {
  /** The export of that name ('' = the default export), or undefined. */
  find(name: string): NbdExport | undefined;
  exports(): NbdExport[];
  /**
   * Present: every client must start TLS first (FORCEDTLS) and present a certificate the CA in
   * these options signed (`requestCert`, `rejectUnauthorized`).
   */
  tls?: TlsOptions;
  /** True once the server is stopping: options are refused with NBD_REP_ERR_SHUTDOWN. */
  stopping(): boolean;
  log(line: string): void;
}

/** Requests of one connection handled at once; the next request is read when one finishes. */
const IN_FLIGHT = 32;
/** Bytes of reads and writes of one connection in flight at once (one larger request runs alone). */
const IN_FLIGHT_BYTES = 64 * 1024 * 1024;
/** Extents one block-status reply describes at most (the client asks again for the rest). */
const MAX_EXTENTS = 4096;
const META_ID = 1;

interface Request {
  flags: number;
  type: number;
  cookie: Buffer;
  offset: number;
  length: number;
}

/**
 * One client connection: fixed newstyle option haggling (LIST, STARTTLS, INFO, GO, EXPORT_NAME,
 * STRUCTURED_REPLY, LIST/SET_META_CONTEXT with `base:allocation`), then the transmission phase
 * with up to `IN_FLIGHT` requests served at once, replies in completion order.
 */
export class NbdSession {
  private socket: Socket | TLSSocket;
  private reader: StreamReader;
  private tlsDone = false;
  private structured = false;
  private noZeroes = false;
  /** Meta contexts chosen by SET_META_CONTEXT, for the export named there. */
  private meta?: { exportName: string; allocation: boolean };
  private export?: NbdExport;
  private inFlight = 0;
  private inFlightBytes = 0;
  private slotFree?: () => void;
  private drained?: Promise<void>;
  private readonly settled = new Set<Promise<void>>();
  private closed = false;

  constructor(
    socket: Socket,
    private readonly host: SessionHost,
    readonly peer: string,
  ) {
    this.socket = socket;
    this.reader = new StreamReader(socket);
    socket.on('error', () => undefined);
  }

  /** Runs the connection to its end; never rejects. */
  async run(): Promise<void> {
    try {
      this.socket.write(Buffer.concat([NBDMAGIC, IHAVEOPT, u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)]));
      const flags = (await this.need(4)).readUInt32BE(0);
      if (flags & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) throw new Disconnect(`unknown client flags 0x${flags.toString(16)}`);
      this.noZeroes = (flags & FLAG_C_NO_ZEROES) !== 0;
      if (await this.haggle()) await this.transmit();
    } catch (err) {
      if (!(err instanceof Disconnect) || err.message) this.host.log(`${this.peer}: ${(err as Error).message}`);
    } finally {
      await Promise.allSettled([...this.settled]);
      this.close();
    }
  }

  /** Ends the connection at once (server stop): requests in flight finish, their replies may be lost. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private async need(n: number): Promise<Buffer> {
    const b = await this.reader.read(n);
    if (!b) throw new Disconnect('');
    return b;
  }

  // ---- option haggling -------------------------------------------------------------------------

  /** Options until the client enters transmission (true) or leaves (false). */
  private async haggle(): Promise<boolean> {
    for (;;) {
      const head = await this.reader.read(16);
      if (!head) return false;
      if (!head.subarray(0, 8).equals(IHAVEOPT)) throw new Disconnect('an option without the IHAVEOPT magic');
      const opt = head.readUInt32BE(8);
      const len = head.readUInt32BE(12);
      if (len > MAX_OPTION) {
        await this.skip(len);
        this.optReply(opt, REP.ERR_TOO_BIG, Buffer.from('option too long'));
        continue;
      }
      const data = await this.need(len);
      if (opt === OPT.ABORT) {
        this.optReply(opt, REP.ACK);
        return false;
      }
      if (this.host.tls && !this.tlsDone && opt !== OPT.STARTTLS) {
        if (opt === OPT.EXPORT_NAME) throw new Disconnect('NBD_OPT_EXPORT_NAME before TLS on a TLS-only server');
        this.optReply(opt, REP.ERR_TLS_REQD, Buffer.from('this server requires TLS (NBD_OPT_STARTTLS)'));
        continue;
      }
      if (this.host.stopping() && opt !== OPT.EXPORT_NAME) {
        this.optReply(opt, REP.ERR_SHUTDOWN, Buffer.from('the server is shutting down'));
        continue;
      }
      switch (opt) {
        case OPT.EXPORT_NAME: {
          const e = this.host.find(data.toString('utf8'));
          if (!e) throw new Disconnect(`NBD_OPT_EXPORT_NAME for an unknown export ${JSON.stringify(data.toString('utf8'))}`);
          this.select(e);
          const tail = this.noZeroes ? Buffer.alloc(0) : Buffer.alloc(124);
          this.socket.write(Buffer.concat([u64(e.image.size), u16(this.transmissionFlags(e)), tail]));
          return true;
        }
        case OPT.LIST:
          if (len !== 0) {
            this.optReply(opt, REP.ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data'));
            break;
          }
          for (const e of this.host.exports()) this.optReply(opt, REP.SERVER, Buffer.concat([u32(Buffer.byteLength(e.name)), Buffer.from(e.name), Buffer.from(e.description ?? '')]));
          this.optReply(opt, REP.ACK);
          break;
        case OPT.STARTTLS:
          await this.startTls(len);
          break;
        case OPT.INFO:
        case OPT.GO:
          if (this.info(opt, data)) return true;
          break;
        case OPT.STRUCTURED_REPLY:
          if (len !== 0) this.optReply(opt, REP.ERR_INVALID, Buffer.from('NBD_OPT_STRUCTURED_REPLY takes no data'));
          else {
            this.structured = true;
            this.optReply(opt, REP.ACK);
          }
          break;
        case OPT.LIST_META_CONTEXT:
        case OPT.SET_META_CONTEXT:
          this.metaContext(opt, data);
          break;
        default:
          this.optReply(opt, REP.ERR_UNSUP, Buffer.from(`option ${opt} is not supported`));
      }
    }
  }

  private async skip(n: number): Promise<void> {
    for (let left = n; left > 0; ) {
      const step = Math.min(left, 1024 * 1024);
      await this.need(step);
      left -= step;
    }
  }

  private optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const head = Buffer.alloc(20);
    head.writeBigUInt64BE(REPLY_MAGIC, 0);
    head.writeUInt32BE(opt, 8);
    head.writeUInt32BE(type, 12);
    head.writeUInt32BE(data.length, 16);
    this.socket.write(data.length ? Buffer.concat([head, data]) : head);
  }

  private async startTls(len: number): Promise<void> {
    if (len !== 0) return this.optReply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('NBD_OPT_STARTTLS takes no data'));
    if (!this.host.tls) return this.optReply(OPT.STARTTLS, REP.ERR_POLICY, Buffer.from('this server has no TLS certificates (--certs)'));
    if (this.tlsDone) return this.optReply(OPT.STARTTLS, REP.ERR_INVALID, Buffer.from('TLS is already running'));
    this.optReply(OPT.STARTTLS, REP.ACK);
    const rest = this.reader.detach();
    if (rest.length) throw new Disconnect('the client sent data before the TLS handshake');
    const secure = await upgrade(this.socket as Socket, this.host.tls);
    secure.on('error', () => undefined);
    this.socket = secure;
    this.reader = new StreamReader(secure);
    this.tlsDone = true;
    // What was negotiated in the clear does not carry over into the TLS session.
    this.structured = false;
    this.meta = undefined;
  }

  /** NBD_OPT_INFO / NBD_OPT_GO: true when GO selected an export (transmission follows). */
  private info(opt: number, data: Buffer): boolean {
    const nameLen = data.length >= 4 ? data.readUInt32BE(0) : -1;
    if (nameLen < 0 || data.length < 4 + nameLen + 2) {
      this.optReply(opt, REP.ERR_INVALID, Buffer.from('malformed NBD_OPT_INFO/GO'));
      return false;
    }
    const name = data.subarray(4, 4 + nameLen).toString('utf8');
    const count = data.readUInt16BE(4 + nameLen);
    if (data.length !== 4 + nameLen + 2 + count * 2) {
      this.optReply(opt, REP.ERR_INVALID, Buffer.from('malformed information request list'));
      return false;
    }
    const e = this.host.find(name);
    if (!e) {
      this.optReply(opt, REP.ERR_UNKNOWN, Buffer.from(`no export ${JSON.stringify(name)}; exports: ${this.host.exports().map((x) => x.name).join(', ')}`));
      return false;
    }
    const asked = new Set(Array.from({ length: count }, (_, i) => data.readUInt16BE(4 + nameLen + 2 + i * 2)));
    this.optReply(opt, REP.INFO, Buffer.concat([u16(INFO.EXPORT), u64(e.image.size), u16(this.transmissionFlags(e))]));
    if (asked.has(INFO.NAME)) this.optReply(opt, REP.INFO, Buffer.concat([u16(INFO.NAME), Buffer.from(e.name)]));
    if (asked.has(INFO.DESCRIPTION) && e.description) this.optReply(opt, REP.INFO, Buffer.concat([u16(INFO.DESCRIPTION), Buffer.from(e.description)]));
    // Any alignment works (reads are byte-exact, writes of partial 4 KiB chunks are merged).
    this.optReply(opt, REP.INFO, Buffer.concat([u16(INFO.BLOCK_SIZE), u32(1), u32(PREFERRED_BLOCK), u32(MAX_PAYLOAD)]));
    this.optReply(opt, REP.ACK);
    if (opt !== OPT.GO) return false;
    this.select(e);
    return true;
  }

  private select(e: NbdExport): void {
    this.export = e;
    // Contexts chosen for another export do not apply to this one.
    if (this.meta && this.host.find(this.meta.exportName) !== e) this.meta = undefined;
  }

  private metaContext(opt: number, data: Buffer): void {
    if (opt === OPT.SET_META_CONTEXT && !this.structured) {
      return this.optReply(opt, REP.ERR_INVALID, Buffer.from('NBD_OPT_SET_META_CONTEXT needs NBD_OPT_STRUCTURED_REPLY first'));
    }
    const strings: string[] = [];
    let pos = 0;
    const str = (): string | undefined => {
      if (pos + 4 > data.length) return undefined;
      const n = data.readUInt32BE(pos);
      if (pos + 4 + n > data.length) return undefined;
      const s = data.subarray(pos + 4, pos + 4 + n).toString('utf8');
      pos += 4 + n;
      return s;
    };
    const name = str();
    const count = pos + 4 <= data.length ? data.readUInt32BE(pos) : -1;
    pos += 4;
    for (let i = 0; i < count; i++) {
      const q = str();
      if (q === undefined) break;
      strings.push(q);
    }
    if (name === undefined || count < 0 || strings.length !== count || pos !== data.length) {
      return this.optReply(opt, REP.ERR_INVALID, Buffer.from('malformed meta context request'));
    }
    const e = this.host.find(name);
    if (!e) return this.optReply(opt, REP.ERR_UNKNOWN, Buffer.from(`no export ${JSON.stringify(name)}`));
    // `base:allocation` is the one context; a LIST without queries, or of `base:`, names it too.
    const matches = (q: string): boolean => q === BASE_ALLOCATION || (opt === OPT.LIST_META_CONTEXT && q === 'base:');
    const allocation = opt === OPT.LIST_META_CONTEXT && count === 0 ? true : strings.some(matches);
    if (allocation) this.optReply(opt, REP.META_CONTEXT, Buffer.concat([u32(opt === OPT.SET_META_CONTEXT ? META_ID : 0), Buffer.from(BASE_ALLOCATION)]));
    if (opt === OPT.SET_META_CONTEXT) this.meta = { exportName: name, allocation };
    this.optReply(opt, REP.ACK);
  }

  private transmissionFlags(e: NbdExport): number {
    let f = TFLAG.HAS_FLAGS | TFLAG.CAN_MULTI_CONN;
    if (isWritable(e)) f |= TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
    else f |= TFLAG.READ_ONLY;
    if (this.structured) f |= TFLAG.SEND_DF;
    return f;
  }

  // ---- transmission ----------------------------------------------------------------------------

  private async transmit(): Promise<void> {
    for (;;) {
      while (this.inFlight >= IN_FLIGHT || (this.inFlight > 0 && this.inFlightBytes >= IN_FLIGHT_BYTES)) await new Promise<void>((r) => (this.slotFree = r));
      if (this.drained) await this.drained;
      if (this.closed) return;
      const head = await this.reader.read(REQUEST_SIZE);
      if (!head) return;
      if (head.readUInt32BE(0) !== REQUEST_MAGIC) throw new Disconnect('a request without the request magic');
      const req: Request = {
        flags: head.readUInt16BE(4),
        type: head.readUInt16BE(6),
        cookie: Buffer.from(head.subarray(8, 16)),
        offset: Number(head.readBigUInt64BE(16)),
        length: head.readUInt32BE(24),
      };
      let payload: Buffer | undefined;
      if (req.type === CMD.WRITE) {
        // A longer write cannot be skipped safely in every case: the spec lets the server hang up.
        if (req.length > MAX_PAYLOAD) throw new Disconnect(`a write of ${req.length} bytes (at most ${MAX_PAYLOAD})`);
        payload = Buffer.from(await this.need(req.length));
      }
      if (req.type === CMD.DISC) return;
      const bytes = req.type === CMD.READ || req.type === CMD.WRITE ? req.length : 0;
      this.inFlight++;
      this.inFlightBytes += bytes;
      const p = this.serve(req, payload)
        .catch((err) => this.fail(req, err))
        .finally(() => {
          this.inFlight--;
          this.inFlightBytes -= bytes;
          this.settled.delete(p);
          const free = this.slotFree;
          this.slotFree = undefined;
          free?.();
        });
      this.settled.add(p);
    }
  }

  private async serve(req: Request, payload?: Buffer): Promise<void> {
    const e = this.export!;
    const image = e.image;
    const inRange = req.offset + req.length <= image.size && Number.isSafeInteger(req.offset + req.length);
    switch (req.type) {
      case CMD.READ:
        if (!inRange || req.length > MAX_PAYLOAD) return this.error(req, ERRNO.EINVAL, 'read beyond the end of the export or too long');
        return this.read(req);
      case CMD.BLOCK_STATUS:
        if (!this.meta?.allocation) return this.error(req, ERRNO.EINVAL, 'no meta context was negotiated');
        if (!inRange || req.length === 0) return this.error(req, ERRNO.EINVAL, 'block status beyond the end of the export');
        return this.blockStatus(req);
      case CMD.WRITE:
      case CMD.WRITE_ZEROES:
      case CMD.TRIM: {
        if (!isWritable(e)) return this.error(req, ERRNO.EPERM, 'the export is read-only');
        if (!inRange) return this.error(req, ERRNO.ENOSPC, 'write beyond the end of the export');
        if (req.type === CMD.WRITE) await e.image.write(req.offset, payload!);
        else if (req.type === CMD.WRITE_ZEROES) await e.image.writeZeroes(req.offset, req.length);
        else await e.image.trim(req.offset, req.length);
        if (req.flags & CMD_FLAG.FUA) await e.image.flush();
        return this.ok(req);
      }
      case CMD.FLUSH:
        if (!isWritable(e)) return this.error(req, ERRNO.EINVAL, 'the export is read-only: nothing to flush');
        await e.image.flush();
        return this.ok(req);
      default:
        return this.error(req, ERRNO.EINVAL, `command ${req.type} is not supported`);
    }
  }

  private async read(req: Request): Promise<void> {
    const image = this.export!.image;
    if (!this.structured || req.flags & CMD_FLAG.DF || req.length === 0) {
      const data = await image.read(req.offset, req.length);
      if (!this.structured) return this.send([simpleHeader(0, req.cookie), data]);
      return this.send([chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE.OFFSET_DATA, req.cookie, 8 + data.length), u64(req.offset), data]);
    }
    const ranges: Allocation[] = image.allocation(req.offset, req.length);
    const datas = await Promise.all(ranges.map((r) => (r.zero ? undefined : image.read(r.offset, r.length))));
    const out: Buffer[] = [];
    ranges.forEach((r, i) => {
      const done = i === ranges.length - 1 ? REPLY_FLAG_DONE : 0;
      const d = datas[i];
      if (d) out.push(chunkHeader(done, REPLY_TYPE.OFFSET_DATA, req.cookie, 8 + d.length), u64(r.offset), d);
      else out.push(chunkHeader(done, REPLY_TYPE.OFFSET_HOLE, req.cookie, 12), u64(r.offset), u32(r.length));
    });
    this.send(out);
  }

  private blockStatus(req: Request): void {
    let ranges = this.export!.image.allocation(req.offset, req.length).slice(0, MAX_EXTENTS);
    if (req.flags & CMD_FLAG.REQ_ONE) ranges = ranges.slice(0, 1);
    const body = Buffer.alloc(4 + 8 * ranges.length);
    body.writeUInt32BE(META_ID, 0);
    ranges.forEach((r, i) => {
      body.writeUInt32BE(r.length, 4 + i * 8);
      body.writeUInt32BE(r.zero ? STATE_HOLE | STATE_ZERO : 0, 8 + i * 8);
    });
    this.send([chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE.BLOCK_STATUS, req.cookie, body.length), body]);
  }

  private ok(req: Request): void {
    this.send([simpleHeader(0, req.cookie)]);
  }

  private error(req: Request, errno: number, message: string): void {
    if (!this.structured) return this.send([simpleHeader(errno, req.cookie)]);
    const msg = Buffer.from(message.slice(0, 4096));
    this.send([chunkHeader(REPLY_FLAG_DONE, REPLY_TYPE.ERROR, req.cookie, 6 + msg.length), u32(errno), u16(msg.length), msg]);
  }

  /** A request that threw: the client gets EIO (a damaged block, a failed overlay write), the log the reason. */
  private fail(req: Request, err: unknown): void {
    const e = err as FerryError;
    this.host.log(`${this.peer}: request ${req.type} at ${req.offset}+${req.length} failed: ${e.message}`);
    const errno = e instanceof FerryError && e.code === 'READ_OUT_OF_RANGE' ? ERRNO.EINVAL : (err as NodeJS.ErrnoException).code === 'ENOSPC' ? ERRNO.ENOSPC : ERRNO.EIO;
    this.error(req, errno, e instanceof FerryError ? `${e.code}: ${e.detail}` : 'I/O error');
  }

  /** Writes one reply's buffers in one go (chunks of one reply never interleave with another's). */
  private send(bufs: Buffer[]): void {
    if (this.closed && this.socket.destroyed) return;
    let ok = true;
    for (const b of bufs) ok = this.socket.write(b) && ok;
    if (!ok && !this.drained) {
      this.drained = new Promise<void>((resolve) => {
        const done = (): void => {
          this.socket.removeListener('drain', done);
          this.socket.removeListener('close', done);
          this.drained = undefined;
          resolve();
        };
        this.socket.once('drain', done);
        this.socket.once('close', done);
      });
    }
  }
}
