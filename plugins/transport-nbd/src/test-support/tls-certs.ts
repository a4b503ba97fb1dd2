import { copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { run } from './nbd-servers.js';

export interface TestCerts {
  /** qemu `tls-creds-x509,endpoint=server` layout: ca-cert.pem, server-cert.pem, server-key.pem. */
  serverDir: string;
  /** Ferry's client layout: ca-cert.pem, client-cert.pem, client-key.pem. */
  clientDir: string;
  /** Only ca-cert.pem, of the right CA: for servers that do not verify clients. */
  caOnlyDir: string;
  /** A client layout whose ca-cert.pem is another CA, which never signed the server. */
  wrongCaDir: string;
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

function ca(dir: string, name: string): void {
  mkdirSync(dir, { recursive: true });
  run('openssl', [
    'req', '-x509', ...EC, '-days', '2', '-subj', `/CN=${name}`,
    '-keyout', path.join(dir, 'ca-key.pem'), '-out', path.join(dir, 'ca-cert.pem'),
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
}

/** A leaf certificate signed by the CA in `caDir`, written as `<prefix>-cert.pem` / `<prefix>-key.pem`. */
function leaf(caDir: string, outDir: string, prefix: string, cn: string, ext: string[]): void {
  mkdirSync(outDir, { recursive: true });
  const csr = path.join(outDir, `${prefix}.csr`);
  const extFile = path.join(outDir, `${prefix}.ext`);
  writeFileSync(extFile, ['basicConstraints=critical,CA:FALSE', 'keyUsage=digitalSignature,keyEncipherment', ...ext].join('\n') + '\n');
  run('openssl', ['req', ...EC, '-subj', `/CN=${cn}`, '-keyout', path.join(outDir, `${prefix}-key.pem`), '-out', csr]);
  run('openssl', [
    'x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'),
    '-CAcreateserial', '-days', '2', '-out', path.join(outDir, `${prefix}-cert.pem`), '-extfile', extFile,
  ]);
}

/** A CA, a server certificate for localhost / 127.0.0.1, a client certificate, and a stranger CA. */
export function makeTestCerts(root: string): TestCerts {
  const caDir = path.join(root, 'ca');
  const serverDir = path.join(root, 'server');
  const clientDir = path.join(root, 'client');
  const caOnlyDir = path.join(root, 'ca-only');
  const wrongCaDir = path.join(root, 'wrong-ca');
  ca(caDir, 'Ferry test CA');
  ca(path.join(root, 'other-ca'), 'Some other CA');
  leaf(caDir, serverDir, 'server', 'localhost', ['extendedKeyUsage=serverAuth', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
  leaf(caDir, clientDir, 'client', 'ferry-proxy', ['extendedKeyUsage=clientAuth']);
  leaf(path.join(root, 'other-ca'), wrongCaDir, 'client', 'ferry-proxy', ['extendedKeyUsage=clientAuth']);
  mkdirSync(caOnlyDir, { recursive: true });
  for (const dir of [serverDir, clientDir, caOnlyDir]) copyFileSync(path.join(caDir, 'ca-cert.pem'), path.join(dir, 'ca-cert.pem'));
  copyFileSync(path.join(root, 'other-ca', 'ca-cert.pem'), path.join(wrongCaDir, 'ca-cert.pem'));
  return { serverDir, clientDir, caOnlyDir, wrongCaDir };
}
