import type { Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket, type TlsOptions } from 'node:tls';
import { SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from './nbd-wire.js';

/** A peer that breaks the protocol or leaves: the connection ends (the message, if any, is logged). */
export class Disconnect extends Error {}

/**
 * The server side of a TLS handshake on a connected socket: a `tls.Server` that never listens is
 * handed the socket, so client certificates are verified as for any TLS listener (`authorized`).
 */
export function upgrade(socket: Socket, options: TlsOptions): Promise<TLSSocket> {
  const tls = createTlsServer({ ...options, requestCert: true, rejectUnauthorized: true });
  return new Promise<TLSSocket>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Disconnect('the TLS handshake did not finish within 30 s'));
    }, 30_000);
    tls.once('secureConnection', (secure: TLSSocket) => {
      clearTimeout(timer);
      if (!secure.authorized) {
        secure.destroy();
        reject(new Disconnect(`the client's certificate was refused: ${String(secure.authorizationError)}`));
      } else resolve(secure);
    });
    tls.once('tlsClientError', (err: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(new Disconnect(`TLS handshake failed: ${err.message}`));
    });
    tls.emit('connection', socket);
  });
}

export function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v);
  return b;
}

export function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

export function u64(v: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(v));
  return b;
}

export function simpleHeader(errno: number, cookie: Buffer): Buffer {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(errno, 4);
  cookie.copy(b, 8);
  return b;
}

export function chunkHeader(flags: number, type: number, cookie: Buffer, length: number): Buffer {
  const b = Buffer.alloc(20);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  cookie.copy(b, 8);
  b.writeUInt32BE(length, 16);
  return b;
}
