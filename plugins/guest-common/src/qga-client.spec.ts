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

/** `openQga` on a unix socket whose agent still holds replies an earlier client never read. */
describe('openQga on an agent socket with an earlier client leftovers', () => {
  it('drops every stale reply before its own guest-sync reply, then pairs commands and replies', async () => {
    const { createServer } = await import('node:net');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-qga-stale-'));
    const sock = path.join(dir, 'qga.sock');
    const server = createServer((c) => {
      // The agent is still working through what an earlier client asked and left unread: those
      // replies come one by one (an error among them), and every answer to us only after them.
      const stale = ['{"return": 11}', '{"return": {}}', '{"error": {"class": "GenericError", "desc": "bad"}}', '{"return": 12}'];
      let out: Promise<unknown> = Promise.resolve();
      const send = (line: string, delayMs: number): void => {
        out = out.then(() => new Promise((res) => setTimeout(res, delayMs))).then(() => void c.write(line + '\n'));
      };
      for (const line of stale) send(line, 30);
      let buf = '';
      c.on('data', (d) => {
        buf += d.toString('latin1').replace(/\xff/g, '');
        let nl: number;
        while ((nl = buf.indexOf('\n')) >= 0) {
          const req = JSON.parse(buf.slice(0, nl)) as { execute: string; arguments?: { id?: number } };
          buf = buf.slice(nl + 1);
          send(JSON.stringify({ return: req.execute === 'guest-sync' ? req.arguments!.id : `ran ${req.execute}` }), 0);
        }
      });
    });
    await new Promise<void>((res) => server.listen(sock, res));
    try {
      const q = await openQga(`unix:${sock}`, 2000);
      expect(await q.execute('guest-ping')).to.equal('ran guest-ping');
      expect(await q.execute('guest-info')).to.equal('ran guest-info');
      await q.close();
    } finally {
      await new Promise((res) => server.close(res));
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
