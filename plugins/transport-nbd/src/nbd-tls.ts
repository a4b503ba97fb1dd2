import { existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';

/** What the client needs to start TLS on an NBD connection (x509, as qemu's `tls-creds-x509`). */
export interface NbdTlsOptions {
  /** PEM of the CA that signed the server's certificate. The server is always verified against it. */
  ca: string | Buffer;
  /** PEM client certificate and key, for servers that verify their peers (qemu's default). */
  cert?: string | Buffer;
  key?: string | Buffer;
  /**
   * Name the server's certificate must carry (DNS name or IP address). Default: the TCP host, or
   * `localhost` on a unix socket.
   */
  hostname?: string;
}

/**
 * Loads a credentials directory in the layout qemu's `tls-creds-x509,dir=...` uses:
 * `ca-cert.pem` (required), `client-cert.pem` and `client-key.pem` (both or neither).
 * Throws an Error naming the missing file.
 */
export function loadTlsCredsDir(dir: string, hostname?: string): NbdTlsOptions {
  const file = (name: string): string => path.join(dir, name);
  if (!existsSync(file('ca-cert.pem'))) throw new Error(`TLS credentials directory ${dir} has no ca-cert.pem`);
  const hasCert = existsSync(file('client-cert.pem'));
  const hasKey = existsSync(file('client-key.pem'));
  if (hasCert !== hasKey) {
    throw new Error(`TLS credentials directory ${dir} has ${hasCert ? 'client-cert.pem but no client-key.pem' : 'client-key.pem but no client-cert.pem'}`);
  }
  return {
    ca: readFileSync(file('ca-cert.pem')),
    cert: hasCert ? readFileSync(file('client-cert.pem')) : undefined,
    key: hasKey ? readFileSync(file('client-key.pem')) : undefined,
    hostname,
  };
}

/**
 * `transport: { name: nbd, tls: { ... } }` in a job: a credentials directory (qemu layout), single
 * files, or both (a file given overrides the directory's). Paths are absolute by then: the job loader
 * resolved them against the job file's folder and checked that they exist.
 */
export interface NbdTlsFiles {
  dir?: string;
  ca?: string;
  cert?: string;
  key?: string;
  hostname?: string;
}

/** Loads `NbdTlsFiles`; throws an Error naming what is missing. */
export function loadTlsFiles(files: NbdTlsFiles): NbdTlsOptions {
  const fromDir = files.dir ? loadTlsCredsDir(files.dir) : undefined;
  const ca = files.ca ? readFileSync(files.ca) : fromDir?.ca;
  if (!ca) throw new Error('TLS settings name no CA (tls.ca or tls.dir with ca-cert.pem)');
  const pair = files.cert && files.key ? { cert: readFileSync(files.cert), key: readFileSync(files.key) } : { cert: fromDir?.cert, key: fromDir?.key };
  return { ca, ...pair, hostname: files.hostname };
}

/**
 * Upgrades the connected socket to TLS after the server acknowledged `NBD_OPT_STARTTLS`. Resolves
 * with the TLS socket once the handshake verified the server against the CA and the expected name;
 * rejects with the verification or handshake error otherwise (the caller destroys the socket).
 */
export function startTls(socket: net.Socket, opts: NbdTlsOptions, defaultHostname: string): Promise<tls.TLSSocket> {
  const hostname = opts.hostname ?? defaultHostname;
  return new Promise((resolve, reject) => {
    const secure = tls.connect({
      socket,
      ca: opts.ca,
      cert: opts.cert,
      key: opts.key,
      minVersion: 'TLSv1.2',
      // SNI carries DNS names only; an IP address is still checked against the certificate below.
      servername: net.isIP(hostname) ? undefined : hostname,
      checkServerIdentity: (_host, cert) => tls.checkServerIdentity(hostname, cert),
    });
    const onError = (err: Error): void => {
      secure.destroy();
      reject(err);
    };
    secure.once('error', onError);
    secure.once('secureConnect', () => {
      secure.removeListener('error', onError);
      // Never an uncaught 'error' between here and the next owner's listeners; a failure still
      // shows as 'close' to the handshake reader and the connection.
      secure.on('error', () => undefined);
      resolve(secure);
    });
  });
}
