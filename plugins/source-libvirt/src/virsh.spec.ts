import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { keyValue, Virsh, VIRSH_MAX_OUTPUT } from './virsh.js';

/** virsh stand-ins (shell scripts): what libvirt's client does when things go wrong. */
describe('virsh runner', () => {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-virsh-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  function fake(name: string, body: string): string {
    const file = path.join(dir, name);
    writeFileSync(file, `#!/bin/sh\n${body}\n`);
    chmodSync(file, 0o755);
    return file;
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

  it('passes -q -c URI and the arguments, no shell, and returns stdout', async () => {
    const v = new Virsh("qemu:///system?socket=/a b/'s", {}, fake('echo-args', 'for a in "$@"; do echo "[$a]"; done'));
    expect(await v.run(['dumpxml', 'web;1'])).to.equal("[-q]\n[-c]\n[qemu:///system?socket=/a b/'s]\n[dumpxml]\n[web;1]\n");
  });

  it('a failing command is SOURCE_COMMAND_FAILED naming command, domain and what libvirt said', async () => {
    const v = new Virsh('qemu:///system', {}, fake('fails', 'echo "error: Requested operation is not valid: domain is not running" >&2; exit 1'));
    const err = await failure(v.run(['domjobabort', 'web1'], { domain: 'web1' }));
    expect(err.code).to.equal('SOURCE_COMMAND_FAILED');
    expect(err.detail).to.include('virsh domjobabort web1 (domain web1) failed: error: Requested operation is not valid');
    expect(err.where).to.include({ vm: 'web1', host: 'qemu:///system' });
  });

  it('no connection, or no virsh at all, is SOURCE_UNREACHABLE at the uri key', async () => {
    const at = { file: '/jobs/j.yaml', line: 4, column: 8, path: 'source.uri' };
    const down = new Virsh('qemu+ssh://h/system', at, fake('down', 'echo "error: failed to connect to the hypervisor" >&2; exit 1'));
    const e1 = await failure(down.run(['list']));
    expect(e1.code).to.equal('SOURCE_UNREACHABLE');
    expect(e1.where).to.include({ line: 4, host: 'qemu+ssh://h/system' });
    const missing = await failure(new Virsh('qemu:///system', at, path.join(dir, 'no-such-virsh')).run(['list']));
    expect(missing.code).to.equal('SOURCE_UNREACHABLE');
    expect(missing.detail).to.include('libvirt-clients');
  });

  it('a hung call is killed at its time limit, and a flood of output is cut off', async () => {
    const slow = new Virsh('qemu:///system', {}, fake('hangs', 'exec sleep 30'));
    const t0 = Date.now();
    const e1 = await failure(slow.run(['domstate', 'x'], { domain: 'x', timeoutMs: 300 }));
    expect(e1.code).to.equal('SOURCE_COMMAND_FAILED');
    expect(e1.detail).to.include('did not finish within 0.3 s');
    expect(Date.now() - t0).to.be.lessThan(5000);
    const flood = new Virsh('qemu:///system', {}, fake('floods', `head -c ${VIRSH_MAX_OUTPUT + 1024} /dev/zero`));
    const e2 = await failure(flood.run(['dumpxml', 'x']));
    expect(e2.code).to.equal('SOURCE_COMMAND_FAILED');
    expect(e2.detail).to.include(`more than ${VIRSH_MAX_OUTPUT} bytes`);
  });

  it('reads key: value lines', () => {
    expect(keyValue('Capacity:       67108864\nAllocation:     1314816\n', 'Capacity')).to.equal('67108864');
    expect(keyValue('Capacity: 1\n', 'Physical')).to.equal(undefined);
  });
});
