import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
// Internal: the spec opens a whole job to see the TLS options reach the transport from YAML.
import { JobRuntime } from '@ferry/core';
import { makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { NbdClient } from './nbd-client.js';
import { loadTlsCredsDir } from './nbd-tls.js';
import { NbdTransport } from './nbd-transport.js';
import { freePort, startQemuNbd, startServer, tempDir, type RunningServer } from './test-support/nbd-servers.js';
import { makeTestCerts, type TestCerts } from './test-support/tls-certs.js';

const MiB = 1024 * 1024;

async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    if (process.env.SHOW_ERRORS) console.log('        ' + (err as Error).message);
    return err as FerryError;
  }
  throw new Error('expected the promise to reject');
}

describe('NBD over TLS (qemu-nbd with tls-creds-x509)', function () {
  this.timeout(20_000);
  let tmp: { dir: string; remove(): void };
  let certs: TestCerts;
  let file: string;
  let server: RunningServer | undefined;
  let content: Buffer;

  before(async function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils', openssl: 'openssl' });
    tmp = tempDir();
    certs = makeTestCerts(path.join(tmp.dir, 'pki'));
    file = path.join(tmp.dir, 'disk.raw');
    await makeVmImage(file, { sizeBytes: 2 * MiB, seed: 17 });
    content = readFileSync(file);
    const port = await freePort();
    server = await startServer(
      'qemu-nbd',
      ['--object', `tls-creds-x509,id=tls0,dir=${certs.serverDir},endpoint=server`, '--tls-creds', 'tls0',
        '-b', '127.0.0.1', '-p', String(port), '--persistent', '--shared=8', '--read-only', '-f', 'raw', file],
      { port },
    );
  });
  after(async () => {
    await server?.stop();
    tmp?.remove();
  });

  it('reads the export over TLS with the CA and a client certificate', async () => {
    const c = await NbdClient.connect({ address: server!.address, tls: loadTlsCredsDir(certs.clientDir), metaContexts: ['base:allocation'] });
    try {
      expect(c.tls).to.equal(true);
      expect(c.structuredReplies).to.equal(true);
      expect((await c.read(0, c.size)).equals(content)).to.equal(true);
      expect((await c.blockStatus(0, c.size)).get('base:allocation')!.length).to.be.greaterThan(0);
    } finally {
      await c.close();
    }
  });

  it('the transport takes its credentials from disk.nbd.tlsCreds', async () => {
    const disk = { name: 'vda', nbd: { address: server!.address, exportName: '', tls: true, tlsCreds: certs.clientDir } };
    const probe = await new NbdTransport().probe(disk);
    expect(probe.ok, probe.reason).to.equal(true);
    expect(probe.reason).to.contain('TLS').and.contain(server!.address);
  });

  it("the job's transport.tls reaches the transport through the plugin host's factory", async () => {
    const job = path.join(tmp.dir, 'job');
    mkdirSync(path.join(job, 'images'), { recursive: true });
    writeFileSync(path.join(job, 'images', 'vda.raw'), '');
    const pki = path.relative(job, certs.clientDir);
    const yaml = [
      'job: nbd-tls',
      'source: { host: file, datastore: ./images, vms: [{ name: vm1, disks: [vda.raw] }] }',
      'repository: { type: filesystem, path: ./repo }',
      'transport:',
      '  name: nbd',
      `  tls: { ca: ${pki}/ca-cert.pem, cert: ${pki}/client-cert.pem, key: ${pki}/client-key.pem }`,
      '  connections: 2',
      '',
    ].join('\n');
    writeFileSync(path.join(job, 'job.yaml'), yaml);
    const saved = process.env.FERRY_NBD_TLS_CREDS;
    delete process.env.FERRY_NBD_TLS_CREDS;
    const rt = await JobRuntime.open(path.join(job, 'job.yaml'));
    try {
      expect(rt.spec.transportOptions).to.deep.include({ connections: 2 });
      const transport = await rt.transport('nbd');
      const probe = await transport.probe!({ name: 'vda', nbd: { address: server!.address, exportName: '', tls: true } });
      expect(probe.ok, probe.reason).to.equal(true);
      expect(probe.reason).to.contain('TLS');
    } finally {
      await rt.close();
      if (saved !== undefined) process.env.FERRY_NBD_TLS_CREDS = saved;
    }
  });

  it('refuses a server whose certificate another CA signed', async () => {
    const err = await rejection(NbdClient.connect({ address: server!.address, tls: loadTlsCredsDir(certs.wrongCaDir) }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain(server!.address).and.match(/certificate|self[- ]signed/i);
  });

  it('refuses a server whose certificate does not carry the expected name', async () => {
    const err = await rejection(NbdClient.connect({ address: server!.address, tls: { ...loadTlsCredsDir(certs.clientDir), hostname: 'nbd.example.org' } }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain('nbd.example.org');
  });

  it('says so when the server requires TLS and the client does not use it', async () => {
    const err = await rejection(NbdClient.connect({ address: server!.address, exportName: '' }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain('requires TLS').and.contain('NBD_REP_ERR_TLS_REQD');
  });

  it('fails cleanly when the server verifies clients and none is presented', async () => {
    const err = await rejection(NbdClient.connect({ address: server!.address, tls: loadTlsCredsDir(certs.caOnlyDir), handshakeTimeoutMs: 3000 }));
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.contain(server!.address).and.contain('client certificate');
  });

  it('says so when TLS is asked of a server without TLS', async () => {
    const plain = tempDir();
    const socket = path.join(plain.dir, 'plain.sock');
    const s = await startQemuNbd(socket, file, { readOnly: true });
    try {
      const err = await rejection(NbdClient.connect({ address: s.address, tls: loadTlsCredsDir(certs.clientDir) }));
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.contain('refused TLS');
    } finally {
      await s.stop();
      plain.remove();
    }
  });

  it('the transport names the missing credentials when a disk asks for TLS without any', async () => {
    const saved = process.env.FERRY_NBD_TLS_CREDS;
    delete process.env.FERRY_NBD_TLS_CREDS;
    try {
      const err = await rejection(new NbdTransport().open({ name: 'vda', nbd: { address: server!.address, exportName: '', tls: true } }));
      expect(err.code).to.equal('TRANSPORT_UNAVAILABLE');
      expect(err.message).to.contain('FERRY_NBD_TLS_CREDS');
      const noCa = await rejection(new NbdTransport({ tlsCreds: tmp.dir }).open({ name: 'vda', nbd: { address: server!.address, exportName: '', tls: true } }));
      expect(noCa.message).to.contain('ca-cert.pem');
    } finally {
      if (saved !== undefined) process.env.FERRY_NBD_TLS_CREDS = saved;
    }
  });
});
