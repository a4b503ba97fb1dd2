import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { agentErrorCode, LibvirtAgentChannel, MAX_AGENT_COMMAND } from './agent-channel.js';
import { Virsh } from './virsh.js';

/** The guest agent through `virsh qemu-agent-command`, with virsh stand-ins printing what libvirt prints. */
describe('libvirt guest agent channel', () => {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-agent-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  function channel(body: string): LibvirtAgentChannel {
    const file = path.join(dir, `virsh-${Math.random().toString(36).slice(2)}`);
    writeFileSync(file, `#!/bin/sh\n${body}\n`);
    chmodSync(file, 0o755);
    return new LibvirtAgentChannel(new Virsh('qemu:///system', {}, file), 'uuid-of-web1', 'web1');
  }

  async function failure(p: Promise<unknown>): Promise<FerryError> {
    try {
      await p;
    } catch (err) {
      if (err instanceof FerryError) return err;
      throw err;
    }
    throw new Error('it did not fail');
  }

  it('sends one qemu-agent-command with --timeout in whole seconds and resolves the return value', async () => {
    const c = channel(`printf '%s\\n' "$@" > ${dir}/args; echo '{"return":{"pid":42}}'`);
    expect(c.label).to.equal('qga libvirt:qemu:///system domain web1');
    expect(await c.execute('guest-exec', { path: 'ls', arg: ['/tmp'] }, 2500)).to.deep.equal({ pid: 42 });
    expect(readFileSync(path.join(dir, 'args'), 'utf8').split('\n').slice(0, 7)).to.deep.equal([
      '-q',
      '-c',
      'qemu:///system',
      'qemu-agent-command',
      '--timeout',
      '3',
      'uuid-of-web1',
    ]);
    expect(JSON.parse(readFileSync(path.join(dir, 'args'), 'utf8').split('\n')[7])).to.deep.equal({ execute: 'guest-exec', arguments: { path: 'ls', arg: ['/tmp'] } });
  });

  it('an agent that is not connected is GUEST_UNREACHABLE naming the domain and the command', async () => {
    const err = await failure(channel(`echo "error: Guest agent is not responding: QEMU guest agent is not connected" >&2; exit 1`).execute('guest-ping'));
    expect(err.code).to.equal('GUEST_UNREACHABLE');
    expect(err.detail).to.include('domain web1').and.to.include('guest-ping').and.to.include('not connected');
    expect(err.where).to.include({ vm: 'web1', host: 'qemu:///system' });
  });

  it('no agent channel, or a domain that is not running, is GUEST_UNREACHABLE', async () => {
    for (const msg of ['error: argument unsupported: QEMU guest agent is not configured', 'error: Requested operation is not valid: domain is not running']) {
      expect((await failure(channel(`echo "${msg}" >&2; exit 1`).execute('guest-ping'))).code, msg).to.equal('GUEST_UNREACHABLE');
    }
  });

  it("the agent's own error is GUEST_STEP_FAILED; a reply that is not JSON too", async () => {
    const err = await failure(channel(`echo "error: internal error: unable to execute QEMU agent command 'guest-fsfreeze-freeze': failed to freeze /: Device or resource busy" >&2; exit 1`).execute('guest-fsfreeze-freeze'));
    expect(err.code).to.equal('GUEST_STEP_FAILED');
    expect(err.detail).to.include('refused guest-fsfreeze-freeze').and.to.include('Device or resource busy');
    expect((await failure(channel('echo not json').execute('guest-ping'))).code).to.equal('GUEST_STEP_FAILED');
  });

  it('a command longer than one process argument may be is refused before virsh runs', async () => {
    const c = channel(`touch ${dir}/ran; echo '{"return":{}}'`);
    const err = await failure(c.execute('guest-exec', { path: 'x', 'input-data': 'A'.repeat(MAX_AGENT_COMMAND) }));
    expect(err.code).to.equal('GUEST_STEP_FAILED');
    expect(err.detail).to.include('guest-exec').and.to.include('domain web1').and.to.include('at most 131071');
    expect(existsSync(path.join(dir, 'ran'))).to.equal(false);
    expect(await c.execute('guest-exec', { path: 'x', 'input-data': 'A'.repeat(MAX_AGENT_COMMAND - 100) })).to.deep.equal({});
  });

  it('no answer within --timeout is GUEST_TIMEOUT; "not responding" sooner is GUEST_UNREACHABLE', async () => {
    const slow = channel(`sleep 1.1; echo "error: Guest agent is not responding: Guest agent not available for now" >&2; exit 1`);
    expect((await failure(slow.execute('guest-fsfreeze-thaw', undefined, 1000))).code).to.equal('GUEST_TIMEOUT');
    expect(agentErrorCode('error: Guest agent is not responding: Guest agent not available for now', false)).to.equal('GUEST_UNREACHABLE');
  });
});
