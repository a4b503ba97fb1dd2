import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { CERT_FILES, initCerts } from './certs.js';
import { loadAuth } from './tls-auth.js';

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return (err as FerryError).code;
  }
  return 'resolved';
}

describe('data pipe certificates (initCerts)', function () {
  let root: string;
  before(async function () {
    root = await mkdtemp(path.join(os.tmpdir(), 'ferry-certs-'));
  });
  after(async function () {
    await rm(root, { recursive: true, force: true });
  });

  it('signs one certificate per role with the role in OU and CN, for server and client use', async function () {
    const dir = path.join(root, 'a');
    const { files } = await initCerts(dir, { days: 30 });
    expect(files.map((f) => path.basename(f))).to.deep.equal([...CERT_FILES]);
    const ca = new X509Certificate(await readFile(path.join(dir, 'ca.crt')));
    expect(ca.ca).to.equal(true);
    for (const role of ['server', 'proxy', 'repository']) {
      const cert = new X509Certificate(await readFile(path.join(dir, `${role}.crt`)));
      expect(cert.subject).to.contain(`OU=${role}`).and.contain(`CN=${role}`);
      expect(cert.verify(ca.publicKey), role).to.equal(true);
      expect(cert.ca).to.equal(false);
      expect(cert.keyUsage).to.include.members(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
      const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
      expect(days).to.be.within(29, 31);
    }
    expect(await codeOf(loadAuth({ kind: 'certs', dir, role: 'proxy' }))).to.equal('resolved');
  });

  it('refuses a folder holding any of the files (even one), leaving it untouched', async function () {
    const partial = path.join(root, 'd');
    await initCerts(partial);
    for (const f of CERT_FILES.filter((x) => x !== 'ca.crt')) await rm(path.join(partial, f));
    const before = await readFile(path.join(partial, 'ca.crt'));
    expect(await codeOf(initCerts(partial))).to.equal('CERTS_FAILED');
    expect((await readFile(path.join(partial, 'ca.crt'))).equals(before)).to.equal(true);
    expect(await codeOf(initCerts(partial, { force: true }))).to.equal('resolved');
  });

  it('a role file with another role inside, or a missing file, is CERTS_FAILED naming the file', async function () {
    const dir = path.join(root, 'e');
    await initCerts(dir);
    await copyFile(path.join(dir, 'proxy.crt'), path.join(dir, 'server.crt'));
    await copyFile(path.join(dir, 'proxy.key'), path.join(dir, 'server.key'));
    const err = await loadAuth({ kind: 'certs', dir, role: 'server' }).catch((e: FerryError) => e);
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('CERTS_FAILED');
    expect((err as FerryError).message).to.contain('server.crt').and.contain('"proxy"');
    await rm(path.join(dir, 'repository.key'));
    const missing = await loadAuth({ kind: 'certs', dir, role: 'repository' }).catch((e: FerryError) => e);
    expect((missing as FerryError).code).to.equal('CERTS_FAILED');
    expect((missing as FerryError).message).to.contain('repository.key');
  });
});
