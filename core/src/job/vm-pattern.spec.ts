import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { globMatcher } from '../session/job-runtime.js';
import { JobFile } from './job-loader.js';

function job(vms: string): JobFile {
  return JobFile.parse(`job: j\nrepository: { type: filesystem }\nsource:\n  host: libvirt\n  vms: ${vms}\n`, '/jobs/job.yaml');
}

function refusal(vms: string): FerryError {
  try {
    job(vms).complete({});
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('the job file was accepted');
}

describe('vms: all and vms: { match }', () => {
  it('leaves the VMs to the source host, remembering the pattern', () => {
    expect(job('all').complete({}).source).to.include({ host: 'libvirt' }).and.deep.include({ vms: [], select: 'all' });
    expect(job('{ match: "web*" }').complete({}).source).to.deep.include({ vms: [], select: { match: 'web*' } });
    expect(job('[{ name: web01 }]').complete({}).source.select).to.equal(undefined);
  });

  it('refuses other words and other keys, at the key', () => {
    for (const bad of ['some', '{ match: "" }', '{ match: web, disks: [vda] }', '{ name: web01 }', '[]']) {
      const err = refusal(bad);
      expect(err.code, bad).to.equal('JOB_INVALID');
      expect(err.where.line, bad).to.equal(5);
    }
  });

  it('matches whole names: * any run, ? one character, the rest literally', () => {
    const m = globMatcher('web*');
    expect(['web', 'web01', 'aweb', 'Web1'].filter(m)).to.deep.equal(['web', 'web01']);
    expect(['db1', 'db12', 'db.1'].filter(globMatcher('db?'))).to.deep.equal(['db1']);
    expect(['a.b', 'axb'].filter(globMatcher('a.b'))).to.deep.equal(['a.b']);
    expect(['(x)', 'x'].filter(globMatcher('(x)'))).to.deep.equal(['(x)']);
  });
});
