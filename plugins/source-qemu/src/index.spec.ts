import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
// Internal: the spec opens a whole job to see the host's schema validate the YAML.
import { JobRuntime } from '@ferry/core';
import { QemuSourceHost } from './qemu-source-host.js';

const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/** The plugin as the core sees it: found from a job's `plugins:` folder, its VM keys checked by the core. */
describe('source-qemu plugin registration', function () {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-qemu-job-'));
    mkdirSync(path.join(dir, 'repo'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function job(vmKeys: string): string {
    const file = path.join(dir, 'job.yaml');
    writeFileSync(
      file,
      [
        'job: nightly',
        `plugins: [${PACKAGE_DIR}]`,
        'source:',
        '  host: qemu',
        '  vms:',
        '    - name: vm1',
        ...vmKeys.split('\n').map((l) => `      ${l}`),
        'repository:',
        '  type: filesystem',
        '  path: ./repo',
        '',
      ].join('\n'),
    );
    return file;
  }

  it('builds the qemu source host for a job that names it', async function () {
    const rt = await JobRuntime.open(job('qmp: unix:/run/vm1.qmp\nnbd: tcp:127.0.0.1:10809\ndisks: [disk0]'));
    try {
      const host = await rt.sourceHost();
      expect(host).to.be.instanceOf(QemuSourceHost);
      expect(rt.spec.source.vms[0].options).to.deep.equal({ qmp: 'unix:/run/vm1.qmp', nbd: 'tcp:127.0.0.1:10809' });
    } finally {
      await rt.close();
    }
  });

  it('a VM without qmp: is JOB_INVALID at its line', async function () {
    const err = (await JobRuntime.open(job('disks: [disk0]')).catch((e: unknown) => e)) as FerryError;
    expect(err).to.be.instanceOf(FerryError);
    expect(err.code).to.equal('JOB_INVALID');
    expect(err.message).to.include('qmp');
    expect(err.where.line).to.equal(6);
  });

  it('snapshot: takes fleecing or auto, anything else is JOB_INVALID at its line', async function () {
    const rt = await JobRuntime.open(job('qmp: unix:/run/vm1.qmp\nsnapshot: auto'));
    try {
      expect(rt.spec.source.vms[0].options).to.deep.equal({ qmp: 'unix:/run/vm1.qmp', snapshot: 'auto' });
    } finally {
      await rt.close();
    }
    const err = (await JobRuntime.open(job('qmp: unix:/run/vm1.qmp\nsnapshot: external')).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('JOB_INVALID');
    expect(err.where.line).to.equal(8);
  });

  it('an unknown VM key is JOB_INVALID at its line', async function () {
    const err = (await JobRuntime.open(job('qmp: unix:/run/vm1.qmp\nqmpp: oops')).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('JOB_INVALID');
    expect(err.where.line).to.equal(8);
  });
});
