import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { access, chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { FerryError } from '../../errors.js';
import { PEER_ROLES } from './types.js';

const run = promisify(execFile);

/**
 * `ferry certs init`: a private CA and one key + certificate per role, what a first-time user needs
 * for mutual TLS between the backup server, proxies and repository services.
 *
 * Made with the `openssl` CLI: node:crypto can make keys but not sign X.509 certificates, and an npm
 * package for that (node-forge) would be a large new dependency for a one-time command. ECDSA P-256
 * keys (fast, supported by every TLS 1.3 stack); the role is the certificate's OU and its name the CN;
 * extended key usage serverAuth + clientAuth because a repository service is both (it serves the
 * backup server and connects to proxies).
 */
export const CERT_FILES: readonly string[] = ['ca.crt', 'ca.key', ...PEER_ROLES.flatMap((r) => [`${r}.crt`, `${r}.key`])];
export const DEFAULT_CERT_DAYS = 3650;

const OPENSSL_CONFIG = `[req]
distinguished_name = dn
[dn]
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
`;
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-noenc'];

export interface InitCertsOptions {
  /** Replace files that are already there. */
  force?: boolean;
  /** Validity of the CA and the role certificates (default 3650 days). */
  days?: number;
}

/**
 * Writes ca.crt/ca.key and server|proxy|repository .crt/.key into `dir` (keys mode 0600). Without
 * `force` it refuses when any of them exists. Files are made in a temporary folder inside `dir` and
 * renamed into place, so a failure never leaves a half set under the real names.
 */
export async function initCerts(dir: string, opts: InitCertsOptions = {}): Promise<{ files: string[] }> {
  const days = opts.days ?? DEFAULT_CERT_DAYS;
  if (!Number.isInteger(days) || days < 1) throw new FerryError('CERTS_FAILED', `days must be a positive integer, not ${days}`, { file: dir });
  await mkdir(dir, { recursive: true, mode: 0o700 }).catch((err: Error) => {
    throw new FerryError('CERTS_FAILED', `cannot create the folder: ${err.message}`, { file: dir }, { cause: err });
  });
  if (!opts.force) await refuseExisting(dir);
  const tmp = await mkdtemp(path.join(dir, '.certs-'));
  try {
    await writeFile(path.join(tmp, 'openssl.cnf'), OPENSSL_CONFIG);
    await makeCa(tmp, days);
    for (const role of PEER_ROLES) await makeLeaf(tmp, role, days);
    for (const f of CERT_FILES) {
      await chmod(path.join(tmp, f), f.endsWith('.key') ? 0o600 : 0o644);
      await rename(path.join(tmp, f), path.join(dir, f));
    }
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return { files: CERT_FILES.map((f) => path.join(dir, f)) };
}

async function refuseExisting(dir: string): Promise<void> {
  const present: string[] = [];
  for (const f of CERT_FILES) {
    if (await access(path.join(dir, f)).then(() => true, () => false)) present.push(f);
  }
  if (present.length) {
    throw new FerryError('CERTS_FAILED', `the folder already holds ${present.join(', ')}; --force replaces them (peers holding the old certificates are then refused)`, { file: dir });
  }
}

async function makeCa(tmp: string, days: number): Promise<void> {
  await openssl(tmp, ['req', '-x509', '-config', 'openssl.cnf', '-extensions', 'ca_ext', ...EC_KEY,
    '-keyout', 'ca.key', '-out', 'ca.crt', '-days', String(days), '-subj', '/O=Ferry/OU=ca/CN=Ferry CA']);
}

async function makeLeaf(tmp: string, role: string, days: number): Promise<void> {
  await openssl(tmp, ['req', '-new', '-config', 'openssl.cnf', ...EC_KEY,
    '-keyout', `${role}.key`, '-out', `${role}.csr`, '-subj', `/O=Ferry/OU=${role}/CN=${role}`]);
  // A random positive 128-bit serial, as RFC 5280 asks for unique serials per CA.
  const serial = randomBytes(16);
  serial[0] &= 0x7f;
  await openssl(tmp, ['x509', '-req', '-in', `${role}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key',
    '-set_serial', `0x${serial.toString('hex')}`, '-days', String(days),
    '-extfile', 'openssl.cnf', '-extensions', 'leaf_ext', '-out', `${role}.crt`]);
}

async function openssl(cwd: string, args: string[]): Promise<void> {
  try {
    // A tight umask: the keys exist with mode 0600 from their first byte, not only after chmod.
    await run('sh', ['-c', 'umask 077 && exec openssl "$@"', 'openssl', ...args], { cwd, timeout: 60_000 });
  } catch (err) {
    const e = err as Error & { code?: unknown; stderr?: string };
    const missing = e.code === 127 || /not found/.test(e.stderr ?? '');
    throw new FerryError('CERTS_FAILED', missing
      ? 'the openssl command is not installed (Debian package openssl)'
      : `openssl ${args[0]} failed: ${(e.stderr || e.message).trim().split('\n').slice(-2).join(' ')}`, { file: cwd }, { cause: err });
  }
}
