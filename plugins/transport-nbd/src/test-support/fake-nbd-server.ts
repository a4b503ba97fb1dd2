import net from 'node:net';

/**
 * A scriptable NBD server in Node for hostile-server specs: it negotiates like a real fixed newstyle
 * server (STRUCTURED_REPLY, SET_META_CONTEXT, GO) and hands every transmission request to the
 * spec's `onRequest`, which may answer correctly, wrongly, or not at all.
 */

export interface FakeRequest {
  type: number;
  flags: number;
  /** The 8 cookie bytes as sent, to echo in replies. */
  cookie: Buffer;
  offset: number;
  length: number;
}

export interface FakeScript {
  /** Replaces the 18-byte greeting (NBDMAGIC, IHAVEOPT, flags). */
  greeting?: Buffer;
  /** Default true: acknowledge NBD_OPT_STRUCTURED_REPLY. */
  structured?: boolean;
  size?: number;
  /** Contexts the server knows; a query for any other is silently not selected. */
  contexts?: string[];
  /** Reply type sent instead of ACK to NBD_OPT_GO (e.g. NBD_REP_ERR_UNKNOWN). */
  goError?: number;
  /** Transmission flags in NBD_INFO_EXPORT. Default HAS_FLAGS | SEND_FLUSH | SEND_WRITE_ZEROES. */
  transmissionFlags?: number;
  onRequest?(req: FakeRequest, socket: net.Socket): void;
}

export interface FakeServer {
  address: string;
  /** Requests the server has seen, in order. */
  requests: FakeRequest[];
  /** Connections accepted so far. */
  connections(): number;
  close(): Promise<void>;
}

const OPT_REPLY_MAGIC = Buffer.from('0003e889045565a9', 'hex');

export async function startFakeServer(socketPath: string, script: FakeScript): Promise<FakeServer> {
  const sockets = new Set<net.Socket>();
  const requests: FakeRequest[] = [];
  let accepted = 0;
  const server = net.createServer((s) => {
    accepted++;
    sockets.add(s);
    s.on('error', () => undefined);
    s.on('close', () => sockets.delete(s));
    serve(s, script, requests);
  });
  await new Promise<void>((resolve, reject) => server.listen(socketPath, resolve).once('error', reject));
  return {
    address: `unix:${socketPath}`,
    requests,
    connections: () => accepted,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function serve(s: net.Socket, script: FakeScript, requests: FakeRequest[]): void {
  const greeting = script.greeting ?? Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT', 'latin1'), Buffer.from([0, 3])]);
  s.write(greeting);
  let buf = Buffer.alloc(0);
  let phase: 'flags' | 'options' | 'transmission' = 'flags';
  const contextIds = new Map<string, number>();
  s.on('data', (d: Buffer) => {
    buf = Buffer.concat([buf, d]);
    for (let progressed = true; progressed && !s.destroyed; ) {
      progressed = false;
      if (phase === 'flags' && buf.length >= 4) {
        buf = buf.subarray(4);
        phase = 'options';
        progressed = true;
      } else if (phase === 'options' && buf.length >= 16 && buf.length >= 16 + buf.readUInt32BE(12)) {
        const option = buf.readUInt32BE(8);
        const data = buf.subarray(16, 16 + buf.readUInt32BE(12));
        buf = buf.subarray(16 + data.length);
        if (answerOption(s, script, option, data, contextIds)) phase = 'transmission';
        progressed = true;
      } else if (phase === 'transmission' && buf.length >= 28) {
        const req = parseRequest(buf);
        const payload = req.type === 1 ? req.length : 0;
        if (buf.length < 28 + payload) break;
        buf = buf.subarray(28 + payload);
        requests.push(req);
        if (req.type === 2) s.end();
        else script.onRequest?.(req, s);
        progressed = true;
      }
    }
  });
}

/** Answers one option; true when transmission starts. */
function answerOption(s: net.Socket, script: FakeScript, option: number, data: Buffer, contextIds: Map<string, number>): boolean {
  if (option === 8) {
    s.write(optReply(option, script.structured === false ? 0x80000001 : 1));
  } else if (option === 10) {
    const nameLen = data.readUInt32BE(0);
    let at = 4 + nameLen;
    const n = data.readUInt32BE(at);
    at += 4;
    for (let i = 0; i < n; i++) {
      const q = data.toString('utf8', at + 4, at + 4 + data.readUInt32BE(at));
      at += 4 + data.readUInt32BE(at);
      if (script.contexts?.includes(q)) {
        const id = 100 + contextIds.size;
        contextIds.set(q, id);
        const payload = Buffer.alloc(4 + Buffer.byteLength(q));
        payload.writeUInt32BE(id, 0);
        payload.write(q, 4);
        s.write(optReply(option, 4, payload));
      }
    }
    s.write(optReply(option, 1));
  } else if (option === 7) {
    if (script.goError) {
      s.write(optReply(option, script.goError, Buffer.from('no such export here')));
      return false;
    }
    const info = Buffer.alloc(12);
    info.writeUInt16BE(0, 0);
    info.writeBigUInt64BE(BigInt(script.size ?? 1024 * 1024), 2);
    info.writeUInt16BE(script.transmissionFlags ?? (1 | 4 | 64), 10);
    s.write(optReply(option, 3, info));
    s.write(optReply(option, 1));
    return true;
  } else if (option === 2) {
    s.end(optReply(option, 1));
  } else s.write(optReply(option, 0x80000001));
  return false;
}

function optReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(20);
  OPT_REPLY_MAGIC.copy(head, 0);
  head.writeUInt32BE(option, 8);
  head.writeUInt32BE(type, 12);
  head.writeUInt32BE(data.length, 16);
  return Buffer.concat([head, data]);
}

function parseRequest(b: Buffer): FakeRequest {
  return {
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    cookie: Buffer.from(b.subarray(8, 16)),
    offset: Number(b.readBigUInt64BE(16)),
    length: b.readUInt32BE(24),
  };
}

/** A structured reply chunk. */
export function chunk(cookie: Buffer, flags: number, type: number, payload: Buffer, declaredLength = payload.length): Buffer {
  const head = Buffer.alloc(20);
  head.writeUInt32BE(0x668e33ef, 0);
  head.writeUInt16BE(flags, 4);
  head.writeUInt16BE(type, 6);
  cookie.copy(head, 8);
  head.writeUInt32BE(declaredLength, 16);
  return Buffer.concat([head, payload]);
}

/** NBD_REPLY_TYPE_OFFSET_DATA for `data` at `offset`, final unless `done` is false. */
export function offsetData(cookie: Buffer, offset: number, data: Buffer, done = true): Buffer {
  const p = Buffer.alloc(8 + data.length);
  p.writeBigUInt64BE(BigInt(offset), 0);
  data.copy(p, 8);
  return chunk(cookie, done ? 1 : 0, 1, p);
}

/** A simple reply (no data unless given). */
export function simpleReply(cookie: Buffer, errno: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const head = Buffer.alloc(16);
  head.writeUInt32BE(0x67446698, 0);
  head.writeUInt32BE(errno, 4);
  cookie.copy(head, 8);
  return Buffer.concat([head, data]);
}

/** NBD_REPLY_TYPE_ERROR (or ERROR_OFFSET when `offset` is given) with a message. */
export function errorChunk(cookie: Buffer, errno: number, message: string, offset?: number): Buffer {
  const msg = Buffer.from(message);
  const p = Buffer.alloc(6 + msg.length + (offset === undefined ? 0 : 8));
  p.writeUInt32BE(errno, 0);
  p.writeUInt16BE(msg.length, 4);
  msg.copy(p, 6);
  if (offset !== undefined) p.writeBigUInt64BE(BigInt(offset), 6 + msg.length);
  return chunk(cookie, 1, offset === undefined ? 0x8001 : 0x8002, p);
}
