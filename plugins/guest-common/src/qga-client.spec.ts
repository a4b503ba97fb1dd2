import { expect } from 'chai';
import { FerryError, type GuestAgentChannel } from '@ferry/core/plugin';
import { openQga } from './qga-client.js';

/** `openQga` with a source host's channel (`GuestOptions.agent` as an object) instead of a socket. */
describe('openQga with a source host channel', () => {
  function fakeChannel(answer: (command: string) => Promise<unknown>): GuestAgentChannel & { calls: string[]; active: number; most: number } {
    const ch = {
      label: 'qga test-host domain vm1',
      calls: [] as string[],
      active: 0,
      most: 0,
      async execute(command: string, _args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown> {
        ch.calls.push(`${command}@${timeoutMs}`);
        ch.most = Math.max(ch.most, ++ch.active);
        try {
          return await answer(command);
        } finally {
          ch.active--;
        }
      },
    };
    return ch;
  }

  it('checks the agent with guest-ping, keeps the label and sends one command at a time', async () => {
    const ch = fakeChannel(async (c) => {
      await new Promise((r) => setTimeout(r, 5));
      return c === 'guest-fsfreeze-status' ? 'thawed' : {};
    });
    const q = await openQga(ch, 4000);
    expect(q.label).to.equal('qga test-host domain vm1');
    expect(ch.calls).to.deep.equal(['guest-ping@4000']);
    const all = await Promise.all([q.execute('guest-fsfreeze-status'), q.execute('guest-info', undefined, 500), q.execute('guest-fsfreeze-status')]);
    expect(all).to.deep.equal(['thawed', {}, 'thawed']);
    expect(ch.most).to.equal(1);
    expect(ch.calls.slice(1)).to.deep.equal(['guest-fsfreeze-status@30000', 'guest-info@500', 'guest-fsfreeze-status@30000']);
    await q.close();
    const err = await q.execute('guest-ping').then(() => undefined, (e: unknown) => e as FerryError);
    expect(err?.code).to.equal('GUEST_UNREACHABLE');
  });

  it("an agent the host cannot reach fails openQga with the host's error", async () => {
    const ch = fakeChannel(() => Promise.reject(new FerryError('GUEST_UNREACHABLE', 'the guest agent of domain vm1 is not connected')));
    const err = await openQga(ch, 1000).then(() => undefined, (e: unknown) => e as FerryError);
    expect(err?.code).to.equal('GUEST_UNREACHABLE');
    expect(err?.detail).to.include('domain vm1');
  });
});
