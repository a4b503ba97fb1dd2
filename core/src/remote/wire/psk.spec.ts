import { randomBytes } from 'node:crypto';
import tls from 'node:tls';
import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { loadAuth } from './tls-auth.js';
import { connect } from './transport.js';
import { assertServes, certs, echoListener, makeCertDirs, type CertDirs } from './testing/wire-fixtures.js';
import type { PeerAuth, PeerRole } from './types.js';

async function refusal(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('expected a refusal');
}

describe('data pipe with a pre-shared key (TLS 1.3 PSK)', function () {
  const key = randomBytes(32);
  const psk = (role: PeerRole, identity: string, k: Buffer = key): PeerAuth => ({ kind: 'psk', key: k, identity, role });

  it('the right key connects; role and name come from HELLO and the TLS identity', async function () {
    const l = await echoListener({ auth: psk('proxy', 'proxy-a'), allow: { roles: ['repository'], names: ['repo-1'] } });
    try {
      const c = await connect({ address: l.address, auth: psk('repository', 'repo-1'), expectRole: 'proxy' });
      expect(c.peer).to.deep.equal({ role: 'proxy', name: 'proxy-a', address: l.address });
      expect(l.accepted[0].peer).to.include({ role: 'repository', name: 'repo-1' });
      await c.send({ type: 'x', body: Buffer.from('psk') });
      expect(Buffer.from((await c.receive())!.body!).toString()).to.equal('psk');
      await c.close();
    } finally {
      await l.close();
    }
  });

  it('a wrong key is refused with PIPE_AUTH on both ends, and the listener keeps serving', async function () {
    const l = await echoListener({ auth: psk('proxy', 'proxy-a') });
    try {
      const err = await refusal(connect({ address: l.address, auth: psk('repository', 'intruder', randomBytes(32)), timeoutMs: 3_000 }));
      expect(err.code).to.equal('PIPE_AUTH');
      expect(err.message).to.contain(l.address);
      expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_AUTH');
      expect(l.accepted).to.have.length(0);
      await assertServes(l, psk('repository', 'repo-1'));
    } finally {
      await l.close();
    }
  });

  it('a name outside `allow.names` is refused with PIPE_AUTH', async function () {
    const l = await echoListener({ auth: psk('proxy', 'proxy-a'), allow: { names: ['repo-1'] } });
    try {
      const err = await refusal(connect({ address: l.address, auth: psk('repository', 'repo-2') }));
      expect(err.code).to.equal('PIPE_AUTH');
      expect(err.message).to.contain('repo-2');
      await assertServes(l, psk('repository', 'repo-1'));
    } finally {
      await l.close();
    }
  });

  it('runs an ECDHE exchange besides the key (psk_dhe_ke), on TLS 1.3 with a SHA-256 suite', async function () {
    const server = await loadAuth(psk('proxy', 'p'));
    const client = await loadAuth(psk('repository', 'r'));
    const srv = tls.createServer(server.server, (s) => s.end());
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
    try {
      const info = await new Promise<{ protocol: string | null; cipher: string; kx: string | undefined }>((resolve, reject) => {
        const c = tls.connect({ ...client.client, host: '127.0.0.1', port: (srv.address() as { port: number }).port }, () => {
          resolve({ protocol: c.getProtocol(), cipher: c.getCipher().name, kx: (c.getEphemeralKeyInfo() as { type?: string }).type });
          c.end();
        });
        c.on('error', reject);
      });
      expect(info.protocol).to.equal('TLSv1.3');
      expect(info.cipher).to.match(/_SHA256$/);
      expect(info.kx).to.equal('ECDH');
    } finally {
      srv.close();
    }
  });

  it('a key shorter than 16 bytes is refused before connecting', async function () {
    const err = await refusal(connect({ address: '127.0.0.1:1', auth: psk('server', 's', Buffer.alloc(8, 1)) }));
    expect(err.code).to.equal('PIPE_AUTH');
    expect(err.message).to.contain('at least 16 bytes');
  });

  describe('mixed with certificates', function () {
    let dirs: CertDirs;
    before(async function () {
      dirs = await makeCertDirs();
    });
    after(async function () {
      await dirs?.cleanup();
    });

    it('a PSK client at a certificate listener is refused with PIPE_AUTH on both ends', async function () {
      const l = await echoListener({ auth: certs(dirs.good, 'proxy') });
      try {
        const err = await refusal(connect({ address: l.address, auth: psk('repository', 'repo-1'), timeoutMs: 3_000 }));
        expect(err.code).to.equal('PIPE_AUTH');
        expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_AUTH');
        await assertServes(l, certs(dirs.good, 'repository'));
      } finally {
        await l.close();
      }
    });

    it('a certificate client at a PSK listener is refused with PIPE_AUTH', async function () {
      const l = await echoListener({ auth: psk('proxy', 'proxy-a') });
      try {
        const err = await refusal(connect({ address: l.address, auth: certs(dirs.good, 'repository'), timeoutMs: 3_000 }));
        expect(err.code).to.equal('PIPE_AUTH');
        expect(((await l.nextRefusal()) as FerryError).code).to.equal('PIPE_AUTH');
        await assertServes(l, psk('repository', 'repo-1'));
      } finally {
        await l.close();
      }
    });
  });
});
