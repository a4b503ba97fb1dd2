import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { createSecureContext, type ConnectionOptions, type TLSSocket, type TlsOptions } from 'node:tls';
import { FerryError } from '../../errors.js';
import type { ProvenPeer } from './handshake.js';
import { isPeerRole, type PeerAuth } from './types.js';

/**
 * TLS settings for both kinds of authentication. Both use TLS 1.3 only.
 *
 * Certificates: each side presents `<role>.crt` and accepts only certificates the folder's CA
 * signed (`rejectUnauthorized` on both ends, `requestCert` on the listener). Host names are not
 * checked: the CA is private to one Ferry installation, and what matters is the role in the
 * certificate's OU, which the handshake checks against `allow` / `expectRole`.
 *
 * Pre-shared key: Node 20 offers TLS-PSK through `pskCallback` (OpenSSL's callbacks). Under TLS 1.3
 * OpenSSL uses such a key as an external PSK with a SHA-256 cipher suite only, in the psk_dhe_ke
 * mode (an ECDHE exchange besides the key, so a leaked key does not reveal recorded sessions). The
 * TLS 1.2 PSK suites would also work but add nothing, so they are left off.
 */
export const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256';
export const MIN_PSK_BYTES = 16;

export interface AuthMaterial {
  /** Options for `tls.createServer`. */
  server: TlsOptions;
  /** Options for `tls.connect` (host and port added by the caller). */
  client: ConnectionOptions;
  /** This side's name in HELLO: the certificate's CN, or the PSK identity. */
  localName: string;
  /** What TLS proved about the peer of an established socket. */
  proven(socket: TLSSocket): ProvenPeer;
}

export async function loadAuth(auth: PeerAuth): Promise<AuthMaterial> {
  return auth.kind === 'certs' ? loadCerts(auth) : pskAuth(auth);
}

async function loadCerts(auth: Extract<PeerAuth, { kind: 'certs' }>): Promise<AuthMaterial> {
  const read = async (name: string): Promise<Buffer> => {
    const file = path.join(auth.dir, name);
    try {
      return await readFile(file);
    } catch (err) {
      throw new FerryError('CERTS_FAILED', `cannot read ${name} for role ${auth.role}: ${(err as Error).message} (ferry certs init ${auth.dir} writes it)`, { file }, { cause: err });
    }
  };
  const [ca, cert, key] = await Promise.all([read('ca.crt'), read(`${auth.role}.crt`), read(`${auth.role}.key`)]);
  const subject = subjectOf(new X509Certificate(cert).subject);
  if (subject.OU !== auth.role) {
    throw new FerryError('CERTS_FAILED', `${auth.role}.crt carries role ${JSON.stringify(subject.OU)} in its OU, not ${auth.role}`, { file: path.join(auth.dir, `${auth.role}.crt`) });
  }
  try {
    // Fails here, naming the folder, rather than at the first connection attempt.
    createSecureContext({ ca, cert, key });
  } catch (err) {
    throw new FerryError('CERTS_FAILED', `${auth.role}.crt, ${auth.role}.key and ca.crt do not form a usable set: ${(err as Error).message}`, { file: auth.dir }, { cause: err });
  }
  const common = { ca, cert, key, minVersion: 'TLSv1.3' as const };
  return {
    server: { ...common, requestCert: true, rejectUnauthorized: true },
    client: { ...common, rejectUnauthorized: true, checkServerIdentity: () => undefined },
    localName: subject.CN ?? auth.role,
    proven: (socket) => {
      const s = socket.getPeerCertificate().subject as unknown as Record<string, string | string[] | undefined> | undefined;
      const ou = first(s?.OU);
      if (!isPeerRole(ou)) {
        throw new FerryError('PIPE_AUTH', `the peer's certificate (CN ${first(s?.CN) ?? '?'}) names no Ferry role in its OU (${JSON.stringify(ou ?? null)})`);
      }
      return { role: ou, name: first(s?.CN) ?? ou };
    },
  };
}

function pskAuth(auth: Extract<PeerAuth, { kind: 'psk' }>): AuthMaterial {
  if (!Buffer.isBuffer(auth.key) || auth.key.length < MIN_PSK_BYTES) {
    throw new FerryError('PIPE_AUTH', `the pre-shared key must be at least ${MIN_PSK_BYTES} bytes (got ${auth.key?.length ?? 0})`);
  }
  // The listener learns the client's identity inside the TLS handshake; keep it per socket.
  const identities = new WeakMap<TLSSocket, string>();
  const common = { minVersion: 'TLSv1.3' as const, ciphers: PSK_CIPHERS };
  return {
    server: {
      ...common,
      pskCallback: (socket: TLSSocket, identity: string) => {
        identities.set(socket, identity);
        return auth.key;
      },
    },
    client: { ...common, checkServerIdentity: () => undefined, pskCallback: () => ({ psk: auth.key, identity: auth.identity }) },
    localName: auth.identity,
    proven: (socket) => {
      // A PSK client would also accept a certificate a public CA signed; only the key counts here.
      if (Object.keys(socket.getPeerCertificate() ?? {}).length) {
        throw new FerryError('PIPE_AUTH', 'the peer authenticated with a certificate, not with the pre-shared key');
      }
      return { name: identities.get(socket) };
    },
  };
}

/** `CN=proxy, OU=proxy, O=Ferry` as printed by X509Certificate.subject (one `K=V` per line). */
function subjectOf(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1);
  }
  return out;
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/**
 * A coded error for a socket error, by phase: before TCP connected everything is "unreachable";
 * during TLS and HELLO, resets and OpenSSL errors mean credentials were refused (or the peer does
 * not speak TLS); once the connection is open, any break (reset, truncated TLS record) is a closed
 * connection, which the services above may resume.
 */
export function mapSocketError(err: Error & { code?: string }, address: string, phase: 'tcp' | 'tls' | 'open', socket?: TLSSocket): FerryError {
  if (err instanceof FerryError) return err.at({ host: address });
  const code = err.code ?? '';
  const where = { host: address };
  // OpenSSL errors carry a short `reason` ("http request", "bad certificate"); the message is a dump.
  const reason = (err as { reason?: string }).reason ?? err.message.split('\n')[0];
  const msg = `${reason}${code ? ` (${code})` : ''}`;
  if (code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return new FerryError('PIPE_TIMEOUT', `TLS handshake not finished in time: ${msg}`, where, { cause: err });
  if (phase === 'tcp') return new FerryError('PIPE_UNREACHABLE', `cannot connect: ${msg}`, where, { cause: err });
  if (phase === 'open') return new FerryError('PIPE_CLOSED', `the connection broke: ${msg}`, where, { cause: err });
  if (socket?.authorizationError) {
    // Node's listener drops a client whose certificate failed verification without a TLS error of
    // its own ("socket hang up"); the verification result is the real reason.
    return new FerryError('PIPE_AUTH', `the client's certificate was refused: ${String(socket.authorizationError)}`, where, { cause: err });
  }
  if (code === 'ECONNRESET' || code === 'EPIPE') {
    return new FerryError('PIPE_AUTH', `the peer broke off the TLS handshake (${code}): it does not trust this side's certificate or key, or does not speak TLS`, where, { cause: err });
  }
  return new FerryError('PIPE_AUTH', `TLS authentication failed: ${msg}`, where, { cause: err });
}
