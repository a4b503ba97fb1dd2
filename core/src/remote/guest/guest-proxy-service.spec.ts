import assert from 'node:assert/strict';
import type { GuestRuntime, GuestSession } from '../../contracts/guest-runtime.js';
import { FerryError } from '../../errors.js';
import { connectionPair, type Connection } from '../wire/index.js';
import { GuestProxyService } from './guest-proxy-service.js';

/** A guest runtime that writes down what was called, for the proxy's bookkeeping. */
function journaling(journal: string[], opts: { failFreeze?: boolean } = {}): GuestRuntime {
  return {
    connect: async (vm, o) => {
      journal.push(`connect ${vm} key=${o.credentials.privateKey?.toString()} script=${o.scripts.preFreeze ? 'file' : 'none'}`);
      const s: GuestSession = {
        label: 'journal',
        preFreeze: async () => (journal.push('preFreeze'), {}),
        freeze: async () => {
          journal.push('freeze');
          if (opts.failFreeze) throw new FerryError('GUEST_STEP_FAILED', 'writer failed');
          return { frozen: 1 };
        },
        thaw: async () => (journal.push('thaw'), {}),
        postThaw: async () => (journal.push('postThaw'), {}),
        skipExtents: async (d) => (journal.push(`skipExtents ${d.name}`), [{ offset: 0, length: 4096 }]),
        close: async () => void journal.push('close'),
      };
      return s;
    },
  };
}

async function ask(c: Connection, type: string, header: Record<string, unknown>): Promise<Record<string, unknown>> {
  await c.send({ type, header });
  for (;;) {
    const m = await c.receive();
    if (!m) throw new Error('closed');
    if (m.type === 'guest.res' && m.header?.id === header.id) return m.header!;
  }
}

const options = {
  os: 'journal',
  via: 'ssh',
  timeoutSeconds: 5,
  freeze: 'auto',
  credentials: { privateKey: Buffer.from('secret-key').toString('base64') },
  scripts: { preFreeze: { name: 'pre.sh', data: Buffer.from('#!/bin/sh\n').toString('base64') } },
  applications: [],
};

describe('guest proxy service: the steps on request, the thaw when the backup server leaves', function () {
  it('runs the steps asked for and forwards results and coded errors', async function () {
    const journal: string[] = [];
    const [server, proxy] = connectionPair({ roles: ['server', 'proxy'] });
    const svc = new GuestProxyService({ runtimeFor: async () => journaling(journal, { failFreeze: true }) });
    const served = svc.serve(proxy);
    assert.deepEqual(await ask(server, 'guest.connect', { id: 1, vm: 'vm1', options }), { id: 1, ok: true, result: { label: 'journal' } });
    assert.deepEqual((await ask(server, 'guest.call', { id: 2, method: 'skipExtents', disk: { name: 'vda' } })).result, [{ offset: 0, length: 4096 }]);
    const failed = await ask(server, 'guest.call', { id: 3, method: 'freeze' });
    assert.equal(failed.ok, false);
    assert.equal((failed.error as { code: string }).code, 'GUEST_STEP_FAILED');
    const bad = await ask(server, 'guest.call', { id: 4, method: 'format' });
    assert.equal((bad.error as { code: string }).code, 'PIPE_PROTOCOL');
    await ask(server, 'guest.call', { id: 5, method: 'thaw' });
    await ask(server, 'guest.call', { id: 6, method: 'close' });
    await server.close();
    await served;
    assert.deepEqual(journal, ['connect vm1 key=secret-key script=file', 'skipExtents vda', 'freeze', 'thaw', 'close']);
  });

  it('a backup server gone after freeze: the proxy thaws, post-thaws and closes, once each', async function () {
    const journal: string[] = [];
    const lines: string[] = [];
    const [server, proxy] = connectionPair({ roles: ['server', 'proxy'] });
    const svc = new GuestProxyService({ runtimeFor: async () => journaling(journal), log: (l) => lines.push(l) });
    const served = svc.serve(proxy);
    await ask(server, 'guest.connect', { id: 1, vm: 'vm1', options });
    await ask(server, 'guest.call', { id: 2, method: 'preFreeze' });
    await ask(server, 'guest.call', { id: 3, method: 'freeze' });
    await server.close('gone');
    await served;
    assert.deepEqual(journal.slice(1), ['preFreeze', 'freeze', 'thaw', 'postThaw', 'close']);
    assert.match(lines.join('\n'), /left without closing the guest session/);
    assert.doesNotMatch(lines.join('\n'), /secret-key|c2VjcmV0LWtleQ/);
  });

  it('a backup server gone after a clean thaw and close: nothing more is done', async function () {
    const journal: string[] = [];
    const [server, proxy] = connectionPair({ roles: ['server', 'proxy'] });
    const served = new GuestProxyService({ runtimeFor: async () => journaling(journal) }).serve(proxy);
    await ask(server, 'guest.connect', { id: 1, vm: 'vm1', options });
    await ask(server, 'guest.call', { id: 2, method: 'freeze' });
    await ask(server, 'guest.call', { id: 3, method: 'thaw' });
    await server.close();
    await served;
    assert.deepEqual(journal.slice(1), ['freeze', 'thaw', 'close']);
  });
});
