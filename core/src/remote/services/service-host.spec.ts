import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../../errors.js';
import { loadServiceConfig } from './service-host.js';

describe('service config files (--config FILE)', function () {
  let dir: string;
  const file = (text: string, name = 'svc.yaml'): string => {
    writeFileSync(path.join(dir, name), text);
    return path.join(dir, name);
  };
  const failure = (f: string): FerryError => {
    try {
      loadServiceConfig(f);
    } catch (err) {
      return err as FerryError;
    }
    throw new Error('no error');
  };

  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-svc-config-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('reads every key, with paths relative to the file', function () {
    writeFileSync(path.join(dir, 'psk.hex'), 'ab'.repeat(32) + '\n');
    const c = loadServiceConfig(
      file('listen: 127.0.0.1:0\ncerts: ./certs\nrepository: ./repo\ntaskSlots: 3\nresumeWindowSeconds: 5\nwindow: 16\nallow: { names: [repo-a] }\npsk: { identity: site-a, keyFile: ./psk.hex }\n'),
    );
    expect(c).to.deep.include({ listen: '127.0.0.1:0', certs: path.join(dir, 'certs'), repository: path.join(dir, 'repo'), taskSlots: 3, resumeWindowSeconds: 5, window: 16 });
    expect(c.allow).to.deep.equal({ names: ['repo-a'] });
    expect(c.psk?.identity).to.equal('site-a');
    expect(c.psk?.key.length).to.equal(32);
  });

  it('names the file and key of a mistake', function () {
    const unknown = failure(file('listen: 127.0.0.1:0\ntaskslots: 3\n'));
    expect(unknown.code).to.equal('CLI_USAGE');
    expect(unknown.where).to.include({ file: path.join(dir, 'svc.yaml'), path: 'taskslots' });
    expect(failure(file('taskSlots: 0\n')).where.path).to.equal('taskSlots');
    expect(failure(file('allow: [a]\n')).where.path).to.equal('allow');
    writeFileSync(path.join(dir, 'short.hex'), 'abcd\n');
    expect(failure(file('psk: { identity: a, keyFile: ./short.hex }\n')).where.path).to.equal('psk.keyFile');
    expect(failure(file('psk: { identity: a, keyFile: ./missing.hex }\n')).where.path).to.equal('psk.keyFile');
    expect(failure(file('- just\n- a list\n')).code).to.equal('CLI_USAGE');
    expect(failure(path.join(dir, 'nope.yaml')).code).to.equal('CLI_USAGE');
  });
});
