import { expect } from 'chai';
import { FerryError } from '../../errors.js';
import { connectionPair } from './memory-pair.js';
import { RequestPump, type PendingRequest } from './request-pump.js';
import type { WireMessage } from './types.js';

describe('RequestPump (requests and answers over one connection)', () => {
  function pump() {
    const [a, b] = connectionPair({ roles: ['server', 'repository'] });
    const calls = new RequestPump<PendingRequest>(a, {
      answerType: 'ans',
      closed: () => new FerryError('PIPE_CLOSED', 'peer closed'),
      settle: (p, m) => (m.header?.ok ? p.resolve(m.header.result) : p.reject(new FerryError('PIPE_PROTOCOL', String(m.header?.why)))),
    });
    const ask = (args: Record<string, unknown>, onMessage?: (m: WireMessage) => void): Promise<unknown> =>
      new Promise((resolve, reject) => calls.start((id) => ({ type: 'ask', header: { id, ...args } }), { resolve, reject, onMessage }));
    return { calls, peer: b, ask };
  }

  it('matches answers to requests by id, in any order, and routes other messages of a request to it', async () => {
    const { calls, peer, ask } = pump();
    const events: unknown[] = [];
    const first = ask({ n: 1 }, (m) => events.push(m.header?.step));
    const second = ask({ n: 2 });
    const m1 = (await peer.receive())!;
    const m2 = (await peer.receive())!;
    expect([m1.header?.n, m2.header?.n]).to.deep.equal([1, 2]);
    expect(m1.header?.id).to.not.equal(m2.header?.id);
    await peer.send({ type: 'ans', header: { id: m2.header?.id, ok: true, result: 'two' } });
    await peer.send({ type: 'progress', header: { id: m1.header?.id, step: 'half' } });
    await peer.send({ type: 'ans', header: { id: 999, ok: true, result: 'nobody asked' } });
    await peer.send({ type: 'ans', header: { id: m1.header?.id, ok: false, why: 'no such point' } });
    expect(await second).to.equal('two');
    const err = await first.then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(FerryError).with.property('code', 'PIPE_PROTOCOL');
    expect(events).to.deep.equal(['half']);
    await calls.close();
  });

  it('fails every waiting request and every later one when the peer closes', async () => {
    const { peer, ask } = pump();
    const waiting = ask({ n: 1 });
    await peer.receive();
    await peer.close('done');
    const err = await waiting.then(() => undefined, (e: unknown) => e);
    expect(err).to.be.instanceOf(FerryError).with.property('code', 'PIPE_CLOSED');
    const later = await ask({ n: 2 }).then(() => undefined, (e: unknown) => e);
    expect(later).to.equal(err);
  });
});
