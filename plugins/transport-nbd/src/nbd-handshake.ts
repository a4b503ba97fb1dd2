import type net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  NBD_CLISERV_MAGIC,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_EXPORT,
  NBD_INIT_MAGIC,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBD_REP_MAGIC_HI,
  NBD_REP_MAGIC_LO,
  NBD_REP_META_CONTEXT,
  nbdOptionName,
  nbdRepName,
  readU64,
} from './nbd-protocol.js';
import { ByteFeed } from './byte-feed.js';
import { startTls, type NbdTlsOptions } from './nbd-tls.js';
import { SocketReader } from './socket-reader.js';

/** Longest option reply Ferry accepts: strings in the protocol are at most 4096 bytes. */
const MAX_OPTION_REPLY = 64 * 1024;
/** Longest meta context reply list: far more than any server offers, few enough to stay bounded. */
const MAX_META_CONTEXT_REPLIES = 1024;

export interface HandshakeOptions {
  exportName: string;
  /** Meta contexts to select (`base:allocation`, `qemu:dirty-bitmap:NAME`); needs structured replies. */
  metaContexts: readonly string[];
  /** Default true; false keeps the connection on simple replies (as old servers do). */
  structuredReplies: boolean;
  tls?: NbdTlsOptions;
  /** Name the server's certificate is checked against when `tls.hostname` is not set. */
  tlsDefaultHostname: string;
}

export interface BlockSizeConstraints {
  minimum: number;
  preferred: number;
  maximum: number;
}

export interface HandshakeResult {
  socket: Duplex;
  /** Where the transmission phase takes its bytes from. */
  feed: ByteFeed;
  /** Bytes read past the end of the handshake (none from a well-behaved server). */
  leftover: Buffer;
  size: number;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Selected meta contexts by name, with the id the server gave each. */
  metaContexts: Map<string, number>;
  /** Why no meta context was selected, when the server refused the option. */
  metaContextRefusal?: string;
  blockSize?: BlockSizeConstraints;
  tls: boolean;
}

/** The server refused an option; the client ends the session politely (NBD_OPT_ABORT). */
export class NbdRefusal extends Error {}

interface MetaContexts {
  ids: Map<string, number>;
  refusal?: string;
}

interface OptionReply {
  type: number;
  data: Buffer;
}

/**
 * Runs the fixed newstyle handshake up to the transmission phase: STARTTLS (when TLS is asked for),
 * STRUCTURED_REPLY, SET_META_CONTEXT, then GO (EXPORT_NAME for servers without GO). Throws an Error
 * saying what the server did; the caller adds the address and export and closes the socket.
 */
export async function nbdHandshake(raw: net.Socket, rawFeed: ByteFeed, opts: HandshakeOptions): Promise<HandshakeResult> {
  const live: { socket: Duplex } = { socket: raw };
  try {
    return await negotiate(raw, rawFeed, live, opts);
  } catch (err) {
    if (err instanceof NbdRefusal) abortHandshake(live.socket);
    else live.socket.destroy();
    throw err;
  }
}

async function negotiate(raw: net.Socket, rawFeed: ByteFeed, live: { socket: Duplex }, opts: HandshakeOptions): Promise<HandshakeResult> {
  let socket: Duplex = raw;
  let feed = rawFeed;
  let reader = new SocketReader(raw, feed);
  const noZeroes = await greet(reader, raw);
  const s = new OptionSession(socket, reader);
  if (opts.tls) {
    await s.startTls();
    if (reader.detach().length) throw new Error('the server sent data between its STARTTLS answer and the TLS handshake');
    rawFeed.stop(); // from here the TLS layer reads the raw socket
    socket = live.socket = await startTls(raw, opts.tls, opts.tlsDefaultHostname);
    feed = ByteFeed.fromStream(socket);
    reader = new SocketReader(socket, feed);
    s.rebind(socket, reader);
  }
  let structuredReplies = false;
  try {
    structuredReplies = opts.structuredReplies && (await s.structuredReplies());
  } catch (err) {
    throw tlsHint(err as Error, opts);
  }
  const meta: MetaContexts =
    structuredReplies && opts.metaContexts.length ? await s.setMetaContexts(opts.exportName, opts.metaContexts) : { ids: new Map() };
  const go = await s.go(opts.exportName, noZeroes);
  return {
    socket,
    feed,
    leftover: reader.detach(),
    size: go.size,
    transmissionFlags: go.flags,
    structuredReplies,
    metaContexts: meta.ids,
    metaContextRefusal: meta.refusal,
    blockSize: go.blockSize,
    tls: Boolean(opts.tls),
  };
}

/** Best-effort soft disconnect during option haggling, as the spec asks of a client that gives up. */
export function abortHandshake(socket: Duplex): void {
  if (socket.destroyed || socket.writableEnded) return;
  const msg = Buffer.alloc(16);
  NBD_OPTS_MAGIC.copy(msg, 0);
  msg.writeUInt32BE(NBD_OPT_ABORT, 8);
  socket.end(msg);
}

/** Reads the server's greeting, answers with the client flags; true when NO_ZEROES was agreed. */
async function greet(reader: SocketReader, socket: Duplex): Promise<boolean> {
  const hello = await reader.read(18);
  if (!hello.subarray(0, 8).equals(NBD_INIT_MAGIC)) {
    throw new Error(`the server does not speak NBD (bad magic 0x${hello.subarray(0, 8).toString('hex')})`);
  }
  const second = hello.subarray(8, 16);
  if (second.equals(NBD_CLISERV_MAGIC)) throw new Error('the server uses the oldstyle handshake, which cannot name an export');
  if (!second.equals(NBD_OPTS_MAGIC)) throw new Error(`bad newstyle magic 0x${second.toString('hex')} in the server greeting`);
  const flags = hello.readUInt16BE(16);
  if (!(flags & NBD_FLAG_FIXED_NEWSTYLE)) throw new Error('the server does not support fixed newstyle negotiation');
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  const clientFlags = Buffer.alloc(4);
  clientFlags.writeUInt32BE(NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  socket.write(clientFlags);
  return noZeroes;
}

/** Option haggling: one option at a time, each answered before the next is sent. */
class OptionSession {
  constructor(
    private socket: Duplex,
    private reader: SocketReader,
  ) {}

  rebind(socket: Duplex, reader: SocketReader): void {
    this.socket = socket;
    this.reader = reader;
  }

  async startTls(): Promise<void> {
    this.send(NBD_OPT_STARTTLS, Buffer.alloc(0));
    const r = await this.reply(NBD_OPT_STARTTLS);
    if (r.type !== NBD_REP_ACK) {
      throw new NbdRefusal(`the server refused TLS (${nbdRepName(r.type)}${message(r)}); it may not be configured for TLS`);
    }
  }

  async structuredReplies(): Promise<boolean> {
    this.send(NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    const r = await this.reply(NBD_OPT_STRUCTURED_REPLY);
    if (r.type === NBD_REP_ACK) return true;
    if (r.type === NBD_REP_ERR_TLS_REQD) throw tlsRequired();
    if (r.type & NBD_REP_FLAG_ERROR) return false;
    throw new Error(`unexpected ${nbdRepName(r.type)} to NBD_OPT_STRUCTURED_REPLY`);
  }

  async setMetaContexts(exportName: string, queries: readonly string[]): Promise<MetaContexts> {
    const name = Buffer.from(exportName, 'utf8');
    const qs = queries.map((q) => Buffer.from(q, 'utf8'));
    const data = Buffer.alloc(8 + name.length + qs.reduce((n, q) => n + 4 + q.length, 0));
    let at = data.writeUInt32BE(name.length, 0);
    at += name.copy(data, at);
    at = data.writeUInt32BE(qs.length, at);
    for (const q of qs) {
      at = data.writeUInt32BE(q.length, at);
      at += q.copy(data, at);
    }
    this.send(NBD_OPT_SET_META_CONTEXT, data);
    const ids = new Map<string, number>();
    for (let i = 0; i < MAX_META_CONTEXT_REPLIES; i++) {
      const r = await this.reply(NBD_OPT_SET_META_CONTEXT);
      if (r.type === NBD_REP_ACK) return { ids };
      if (r.type === NBD_REP_ERR_TLS_REQD) throw tlsRequired();
      // A refused selection selects nothing; the client explains it when a context is needed.
      if (r.type & NBD_REP_FLAG_ERROR) return { ids: new Map(), refusal: `${nbdRepName(r.type)}${message(r)}` };
      if (r.type !== NBD_REP_META_CONTEXT || r.data.length < 5) throw new Error(`malformed reply ${nbdRepName(r.type)} to NBD_OPT_SET_META_CONTEXT`);
      ids.set(r.data.toString('utf8', 4), r.data.readUInt32BE(0));
    }
    throw new Error(`the server sent more than ${MAX_META_CONTEXT_REPLIES} meta context replies`);
  }

  async go(exportName: string, noZeroes: boolean): Promise<{ size: number; flags: number; blockSize?: BlockSizeConstraints }> {
    const name = Buffer.from(exportName, 'utf8');
    const data = Buffer.alloc(4 + name.length + 4);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    data.writeUInt16BE(1, 4 + name.length);
    data.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 6 + name.length);
    this.send(NBD_OPT_GO, data);
    let info: { size: number; flags: number } | undefined;
    let blockSize: BlockSizeConstraints | undefined;
    for (let i = 0; i < MAX_META_CONTEXT_REPLIES; i++) {
      const r = await this.reply(NBD_OPT_GO);
      if (r.type === NBD_REP_INFO) {
        const parsed = parseInfo(r.data);
        if (parsed?.kind === 'export') info = parsed;
        if (parsed?.kind === 'block-size') blockSize = parsed.constraints;
      } else if (r.type === NBD_REP_ACK) {
        if (!info) throw new Error('the server accepted NBD_OPT_GO without sending NBD_INFO_EXPORT');
        return { ...info, blockSize };
      } else if (r.type === NBD_REP_ERR_UNSUP) {
        return this.exportName(name, noZeroes);
      } else {
        throw goRefusal(r);
      }
    }
    throw new Error('the server sent too many replies to NBD_OPT_GO');
  }

  /** The pre-GO way into transmission, for servers that do not know NBD_OPT_GO. */
  private async exportName(name: Buffer, noZeroes: boolean): Promise<{ size: number; flags: number }> {
    this.send(NBD_OPT_EXPORT_NAME, name);
    let head: Buffer;
    try {
      head = await this.reader.read(noZeroes ? 10 : 134);
    } catch (err) {
      throw new NbdRefusal(`the server closed the connection after NBD_OPT_EXPORT_NAME (unknown export?): ${(err as Error).message}`);
    }
    return { size: checkedSize(head, 0), flags: head.readUInt16BE(8) };
  }

  private send(option: number, data: Buffer): void {
    const head = Buffer.alloc(16);
    NBD_OPTS_MAGIC.copy(head, 0);
    head.writeUInt32BE(option, 8);
    head.writeUInt32BE(data.length, 12);
    this.socket.write(data.length ? Buffer.concat([head, data]) : head);
  }

  private async reply(option: number): Promise<OptionReply> {
    const head = await this.reader.read(20);
    if (head.readUInt32BE(0) !== NBD_REP_MAGIC_HI || head.readUInt32BE(4) !== NBD_REP_MAGIC_LO) {
      throw new Error(`bad option reply magic 0x${head.subarray(0, 8).toString('hex')}`);
    }
    const echoed = head.readUInt32BE(8);
    if (echoed !== option) throw new Error(`the server answered ${nbdOptionName(echoed)} to ${nbdOptionName(option)}`);
    const type = head.readUInt32BE(12);
    const length = head.readUInt32BE(16);
    if (length > MAX_OPTION_REPLY) throw new Error(`option reply of ${length} bytes to ${nbdOptionName(option)} is too long`);
    return { type, data: length ? await this.reader.read(length) : Buffer.alloc(0) };
  }
}

type Info = { kind: 'export'; size: number; flags: number } | { kind: 'block-size'; constraints: BlockSizeConstraints };

function parseInfo(data: Buffer): Info | undefined {
  if (data.length < 2) throw new Error('NBD_REP_INFO shorter than its type');
  const type = data.readUInt16BE(0);
  if (type === NBD_INFO_EXPORT) {
    if (data.length !== 12) throw new Error(`NBD_INFO_EXPORT of ${data.length} bytes (must be 12)`);
    return { kind: 'export', size: checkedSize(data, 2), flags: data.readUInt16BE(10) };
  }
  if (type === NBD_INFO_BLOCK_SIZE) {
    if (data.length !== 14) throw new Error(`NBD_INFO_BLOCK_SIZE of ${data.length} bytes (must be 14)`);
    const c = { minimum: data.readUInt32BE(2), preferred: data.readUInt32BE(6), maximum: data.readUInt32BE(10) };
    const pow2 = (n: number): boolean => n > 0 && (n & (n - 1)) === 0;
    if (!pow2(c.minimum) || c.minimum > 65536 || c.maximum < c.minimum) {
      throw new Error(`implausible block size constraints min ${c.minimum} preferred ${c.preferred} max ${c.maximum}`);
    }
    return { kind: 'block-size', constraints: c };
  }
  return undefined; // the spec asks clients to ignore information types they do not know
}

function checkedSize(buf: Buffer, at: number): number {
  if (buf.readUInt32BE(at) >= 0x200000) throw new Error('the export is larger than 2^53 bytes');
  return readU64(buf, at);
}

function message(r: OptionReply): string {
  const text = r.data.toString('utf8').trim();
  return text ? `: ${text}` : '';
}

/** A server that verifies clients (qemu's default) drops a client without a certificate right after TLS. */
function tlsHint(err: Error, opts: HandshakeOptions): Error {
  if (!opts.tls || opts.tls.cert || err instanceof NbdRefusal) return err;
  return new Error(`${err.message} after the TLS handshake; the server may require a client certificate (client-cert.pem, client-key.pem)`);
}

function tlsRequired(): NbdRefusal {
  return new NbdRefusal('the server requires TLS (NBD_REP_ERR_TLS_REQD); set tls on the disk and give TLS credentials');
}

function goRefusal(r: OptionReply): Error {
  if (r.type === NBD_REP_ERR_UNKNOWN) return new NbdRefusal(`the server has no such export (NBD_REP_ERR_UNKNOWN${message(r)})`);
  if (r.type === NBD_REP_ERR_TLS_REQD) return tlsRequired();
  if (r.type & NBD_REP_FLAG_ERROR) return new NbdRefusal(`the server refused the export (${nbdRepName(r.type)}${message(r)})`);
  return new Error(`unexpected ${nbdRepName(r.type)} to NBD_OPT_GO`);
}
